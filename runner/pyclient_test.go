package runner_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A client built on Python's grpcio (the stack of CrunchDAO's
// model-runner-client) calls the Go runner: the wire format holds across
// implementations, not only against our own generated Go code.
func TestPythonGRPCClientAgainstRunner(t *testing.T) {
	py := pythonWithGRPC(t)
	protoc, err := exec.LookPath("protoc")
	if err != nil {
		t.Skip("protoc is not installed (Debian: protobuf-compiler); .ci/run installs it")
	}
	gen := t.TempDir()
	out, err := exec.Command(protoc, "-I", "../proto", "--python_out", gen,
		"commons/commons.proto", "dynamic_subclass/dynamic_subclass.proto", "train_infer/train_infer.proto").CombinedOutput()
	if err != nil {
		t.Fatalf("protoc --python_out: %v\n%s", err, out)
	}
	h := start(t, pythonWorker(t, "pymodel")).ready()
	script, _ := filepath.Abs("testdata/pyclient.py")
	out, err = exec.Command(py, script, h.addr, gen).CombinedOutput()
	t.Logf("python client:\n%s", out)
	if err != nil {
		t.Fatalf("the Python grpcio client failed: %v", err)
	}
	if !strings.Contains(string(out), "\n0 failed") {
		t.Fatal("the Python client did not report its checks")
	}
}

// pythonWithGRPC finds an interpreter with grpcio and protobuf (Debian's
// python3-grpcio and python3-protobuf live under /usr/bin/python3).
func pythonWithGRPC(t *testing.T) string {
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import grpc, google.protobuf").Run() == nil {
			return py
		}
	}
	t.Skip("no python3 with grpcio and protobuf (Debian: python3-grpcio python3-protobuf); .ci/run installs them")
	return ""
}

package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/envflag"
)

// The Python submissions of the demo; the Go one is bin/example-model.
//
//go:embed models
var modelFiles embed.FS

// artifact is one submission packed as the node fetches it: a .tar.gz at
// a URL (any go-getter source works), with the SHA-256 the authorization
// records (Nomad checks it before unpacking).
type artifact struct {
	file   string // name under the artifact server's root
	sha256 [32]byte
}

// file is one entry of an artifact.
type file struct {
	name string
	mode int64
	data []byte
}

// demoResources are the resources archives of the demo's submissions: what
// a cruncher ships beside its code. py-tracker's is a bias it adds (0, so
// that the call still answers 42); py-sklearn's are its fitted weights, a
// LinearRegression's coefficients (see its main.py for why not a pickle).
var demoResources = map[string][]file{
	"py-tracker": {{"bias.txt", 0o644, []byte("0\n")}},
	"py-sklearn": {{"model.json", 0o644, []byte(sklearnWeights)}},
}

// sklearnWeights are py-sklearn's fitted weights: scikit-learn 1.6.1's
// LinearRegression fitted offline on driver/testdata/skmodel/resources/train.csv
// (20 rows of y = 2a - b + 0.5), rounded to 12 digits (the fit gave
// 1.9999999999999996, -1.0000000000000002 and 0.5000000000000013).
const sklearnWeights = `{"estimator": "sklearn.linear_model.LinearRegression", "features": ["a", "b"], "coef": [2.0, -1.0], "intercept": 0.5}
`

// requirements returns the requirement lines of a submission's
// requirements.txt (comments and blanks left out), nil without one.
func requirements(files []file) []string {
	var out []string
	for _, f := range files {
		if f.name != "requirements.txt" {
			continue
		}
		for _, line := range strings.Split(string(f.data), "\n") {
			line, _, _ = strings.Cut(line, "#")
			if line = strings.TrimSpace(line); line != "" {
				out = append(out, line)
			}
		}
	}
	return out
}

// pythonSubmission returns the files of models/<name> plus the crunch's
// base module.
func pythonSubmission(name string) ([]file, error) {
	base, err := modelFiles.ReadFile("models/crunch_base.py")
	if err != nil {
		return nil, err
	}
	files := []file{{"crunch_base.py", 0o644, base}}
	err = fs.WalkDir(modelFiles, "models/"+name, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := modelFiles.ReadFile(p)
		files = append(files, file{path.Base(p), 0o644, b})
		return err
	})
	return files, err
}

// writeArtifact packs files into dir/name.tar.gz.
func writeArtifact(dir, name string, files []file) (artifact, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, f := range files {
		hdr := &tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return artifact{}, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return artifact{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return artifact{}, err
	}
	if err := gz.Close(); err != nil {
		return artifact{}, err
	}
	a := artifact{file: name + ".tar.gz", sha256: sha256.Sum256(buf.Bytes())}
	return a, os.WriteFile(filepath.Join(dir, a.file), buf.Bytes(), 0o644)
}

// serveArtifacts is the hidden `artifacts` command: a static file server
// for the submissions, what a cruncher's storage would be.
func serveArtifacts(args []string, stderr io.Writer) int {
	fset := flag.NewFlagSet("modelnodes-demo artifacts", flag.ContinueOnError)
	fset.SetOutput(stderr)
	dir := fset.String("dir", "", "directory to serve")
	listen := fset.String("listen", "127.0.0.1:18081", "address to listen on")
	fset.Usage = envflag.Usage(fset, envPrefix+"_ARTIFACTS", "modelnodes-demo artifacts --dir DIR: serve the demo's submissions over HTTP (the demo starts it).")
	if err := envflag.Parse(fset, envPrefix+"_ARTIFACTS", args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "artifacts", Output: stderr})
	if *dir == "" {
		log.Error("--dir is required")
		return exitUsage
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("listen", "error", err)
		return exitFailed
	}
	files := http.FileServer(http.Dir(*dir))
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Info("request", "method", r.Method, "path", r.URL.Path, "from", r.RemoteAddr)
		files.ServeHTTP(w, r)
	})}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("serving", "dir", *dir, "addr", "http://"+ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("serve", "error", err)
		return exitFailed
	}
	return 0
}

// artifactURL is where the node fetches a submission.
func (d *demo) artifactURL(a artifact) string {
	return fmt.Sprintf("http://127.0.0.1:%d/%s", d.port(baseArtifactPort), a.file)
}

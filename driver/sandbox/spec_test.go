package sandbox

import "testing"

// A spec is validated before anything is isolated: no root needed. (The
// sandbox itself is tested as root, in the e2e-tagged sandbox_test.go.)
func TestSpecRefusesRoot(t *testing.T) {
	s := &Spec{UID: 0, GID: 0, Root: "/x", Landlock: LandlockOff}
	if err := s.Validate(); err == nil {
		t.Fatal("a spec running the worker as root was accepted")
	}
	s = &Spec{UID: 1000, GID: 1000, Root: "/x", Landlock: "maybe"}
	if err := s.Validate(); err == nil {
		t.Fatal("an unknown landlock mode was accepted")
	}
}

// ListenInside is the sandbox's one way out: only a loopback address of the
// sandbox's own namespace may be named.
func TestSpecListenInsideIsLoopbackOnly(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"", true},
		{"127.0.0.1:3128", true},
		{"[::1]:3128", true},
		{"0.0.0.0:3128", false},
		{"10.0.0.1:3128", false},
		{"localhost:3128", false}, // a name: resolved by whom?
		{"127.0.0.1", false},
	} {
		s := &Spec{UID: 1000, GID: 1000, Root: "/x", Landlock: LandlockOff, ListenInside: tc.addr}
		if err := s.Validate(); (err == nil) != tc.ok {
			t.Errorf("ListenInside %q: err = %v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
}

// The seccomp mode is the default filter or "off"; anything else is a
// mistake, refused before anything runs.
func TestSpecSeccompMode(t *testing.T) {
	for mode, ok := range map[string]bool{SeccompDefault: true, SeccompOff: true, "on": false, "permissive": false} {
		s := &Spec{UID: 1000, GID: 1000, Root: "/x", Landlock: LandlockOff, Seccomp: mode}
		if err := s.Validate(); (err == nil) != ok {
			t.Errorf("Seccomp %q: err = %v, want ok=%v", mode, err, ok)
		}
	}
}

// Reserved devices land under /dev on names of their own: never over the
// nodes the sandbox makes there, never two on one name.
func TestSpecDevices(t *testing.T) {
	for _, tc := range []struct {
		name string
		devs []Device
		ok   bool
	}{
		{"one device", []Device{{"/dev/nvidia0", "/dev/nvidia0"}}, true},
		{"in a subdirectory", []Device{{"/dev/nvidia-caps/nvidia-cap1", "/dev/nvidia-caps/nvidia-cap1"}}, true},
		{"two", []Device{{"/dev/nvidia0", "/dev/nvidia0"}, {"/dev/nvidiactl", "/dev/nvidiactl"}}, true},
		{"outside /dev", []Device{{"/dev/nvidia0", "/usr/nvidia0"}}, false},
		{"/dev itself", []Device{{"/dev/nvidia0", "/dev"}}, false},
		{"relative", []Device{{"/dev/nvidia0", "dev/nvidia0"}}, false},
		{"not clean", []Device{{"/dev/nvidia0", "/dev/../etc/passwd"}}, false},
		{"trailing slash", []Device{{"/dev/nvidia0", "/dev/nvidia0/"}}, false},
		{"over /dev/null", []Device{{"/dev/kmsg", "/dev/null"}}, false},
		{"over /dev/urandom", []Device{{"/dev/kmsg", "/dev/urandom"}}, false},
		{"in /dev/shm", []Device{{"/dev/kmsg", "/dev/shm/x"}}, false},
		{"over /dev/fd", []Device{{"/dev/kmsg", "/dev/fd"}}, false},
		{"under /dev/fd", []Device{{"/dev/kmsg", "/dev/fd/3"}}, false},
		{"over /dev/stdout", []Device{{"/dev/kmsg", "/dev/stdout"}}, false},
		{"twice", []Device{{"/dev/nvidia0", "/dev/gpu"}, {"/dev/nvidia1", "/dev/gpu"}}, false},
		{"one under another", []Device{{"/dev/nvidia0", "/dev/gpu"}, {"/dev/nvidia1", "/dev/gpu/1"}}, false},
		{"relative host path", []Device{{"dev/nvidia0", "/dev/nvidia0"}}, false},
	} {
		s := &Spec{UID: 1000, GID: 1000, Root: "/x", Landlock: LandlockOff, Devices: tc.devs}
		if err := s.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// A mount lands clear of everything else the worker sees: the places the
// sandbox builds, the system paths, the task's own directories and the
// other mounts, neither on them, under them nor over them.
func TestSpecMounts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mounts []Mount
		ok     bool
	}{
		{"one", []Mount{{"/srv/data", "/data", true}}, true},
		{"two apart", []Mount{{"/srv/a", "/data/a", true}, {"/srv/b", "/data/b", false}}, true},
		{"a file", []Mount{{"/srv/weights.bin", "/weights.bin", true}}, true},
		{"relative", []Mount{{"/srv/data", "data", true}}, false},
		{"not clean", []Mount{{"/srv/data", "/data/../model", true}}, false},
		{"the root", []Mount{{"/srv/data", "/", true}}, false},
		{"over the model", []Mount{{"/srv/data", "/model", true}}, false},
		{"in the model", []Mount{{"/srv/data", "/model/resources", true}}, false},
		{"over the environment", []Mount{{"/srv/data", "/env", true}}, false},
		{"over the host script", []Mount{{"/srv/data", "/modelbox", true}}, false},
		{"over /tmp", []Mount{{"/srv/data", "/tmp", false}}, false},
		{"in /scratch", []Mount{{"/srv/data", "/scratch/x", false}}, false},
		{"in /proc", []Mount{{"/srv/data", "/proc/self", false}}, false},
		{"in /dev", []Mount{{"/srv/data", "/dev/nvidia0", false}}, false},
		{"over a system path", []Mount{{"/srv/data", "/usr", true}}, false},
		{"in a system path", []Mount{{"/srv/lib", "/usr/lib/x86_64-linux-gnu", true}}, false},
		{"above a system path", []Mount{{"/srv/opt", "/opt", true}}, false},
		{"over a writable path", []Mount{{"/srv/out", "/build/out", false}}, false},
		{"the sandbox's work place", []Mount{{"/srv/data", "/.old-root", false}}, false},
		{"twice", []Mount{{"/srv/a", "/data", true}, {"/srv/b", "/data", true}}, false},
		{"one in another", []Mount{{"/srv/a", "/data", true}, {"/srv/b", "/data/b", true}}, false},
		{"relative host path", []Mount{{"srv/data", "/data", true}}, false},
	} {
		s := &Spec{UID: 1000, GID: 1000, Root: "/x", Landlock: LandlockOff, Mounts: tc.mounts,
			ReadOnly: []string{"/usr", "/lib", "/opt/python/3.13"}, Writable: []string{"/build/out"},
			Binds: []Bind{{"/var/m", "/model"}, {"/var/e", "/env"}, {"/var/h", "/modelbox"}}}
		if err := s.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

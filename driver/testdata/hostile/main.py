"""A model that tries to escape its sandbox. Each method attempts one thing
and returns what happened as text, so the test can assert the attempt failed
inside the sandbox while the runner kept serving."""

import ctypes
import os
import platform
import socket
import subprocess
import time

from base import Base

# Numbers of the kernel calls the hostile model tries (ctypes has no
# wrappers for them), on the two architectures nodes run.
SYSCALLS = {
    "x86_64": {"io_uring_setup": 425, "userfaultfd": 323, "keyctl": 250, "add_key": 248,
               "bpf": 321, "perf_event_open": 298, "unshare": 272, "setns": 308, "mount": 165,
               "fsopen": 430, "process_vm_readv": 310, "personality": 135, "clone3": 435,
               "init_module": 175, "kexec_load": 246},
    "aarch64": {"io_uring_setup": 425, "userfaultfd": 282, "keyctl": 219, "add_key": 217,
                "bpf": 280, "perf_event_open": 241, "unshare": 97, "setns": 268, "mount": 40,
                "fsopen": 430, "process_vm_readv": 270, "personality": 92, "clone3": 435,
                "init_module": 105, "kexec_load": 104},
}
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
ADDR_NO_RANDOMIZE = 0x0040000


class Hostile(Base):
    def connect(self, host, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect((host, int(port)))
            return "connected"
        except OSError as exc:
            return "refused: %s" % exc
        finally:
            s.close()

    def read(self, path):
        try:
            with open(path, "rb") as f:
                return "read %d bytes" % len(f.read())
        except OSError as exc:
            return "refused: %s" % exc

    def write(self, path):
        try:
            with open(path, "w") as f:
                f.write("pwned")
            return "wrote"
        except OSError as exc:
            return "refused: %s" % exc

    def ptrace(self, pid):
        libc = ctypes.CDLL(None, use_errno=True)
        PTRACE_ATTACH = 16
        if libc.ptrace(PTRACE_ATTACH, int(pid), None, None) == 0:
            return "attached"
        return "refused: errno %d" % ctypes.get_errno()

    def syscall(self, name):
        """One kernel call of each family the sandbox's seccomp filter
        refuses, with arguments that would work without the filter."""
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        buf = ctypes.create_string_buffer(256)
        opened = []

        def netns():
            opened.append(os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
            return opened[-1]

        args = {
            "io_uring_setup": lambda: [1, buf],
            "userfaultfd": lambda: [0o2000000 | 1],  # O_CLOEXEC | UFFD_USER_MODE_ONLY
            "keyctl": lambda: [0, -3, 1],  # KEYCTL_GET_KEYRING_ID of the session keyring, created
            "add_key": lambda: [b"user", b"hostile", b"x", 1, -2],  # into the process keyring
            "bpf": lambda: [0, buf, 72],  # BPF_MAP_CREATE
            "perf_event_open": lambda: [buf, 0, -1, -1, 0],
            "unshare": lambda: [CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS],
            "setns": lambda: [netns(), CLONE_NEWNET],
            "mount": lambda: [b"none", b"/tmp", b"tmpfs", 0, None],
            "fsopen": lambda: [b"tmpfs", 0],
            "process_vm_readv": lambda: [os.getpid(), buf, 1, buf, 1, 0],
            "personality": lambda: [ADDR_NO_RANDOMIZE],
            "clone3": lambda: [None, 0],  # EINVAL unfiltered: no child
            "init_module": lambda: [buf, 16, b""],
            "kexec_load": lambda: [0, 0, None, 0],
        }[name]()
        nr = SYSCALLS[platform.machine()][name]
        try:
            r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
        finally:
            for fd in opened:
                os.close(fd)
        if r == -1:
            return "refused: errno %d" % ctypes.get_errno()
        return "allowed: %s returned %d" % (name, r)

    def socket_family(self, family):
        """A socket of a family other than unix and IP: netlink is the way
        to nf_tables and routing, AF_ALG the kernel's crypto API."""
        kind = {"AF_NETLINK": socket.SOCK_RAW, "AF_ALG": socket.SOCK_SEQPACKET, "AF_PACKET": socket.SOCK_RAW}[family]
        try:
            socket.socket(getattr(socket, family), kind, 0).close()
            return "opened"
        except OSError as exc:
            return "refused: errno %d" % exc.errno

    def memfd_exec(self):
        """Code that was never on the disk: copy a binary into an anonymous
        file and run it."""
        try:
            fd = os.memfd_create("payload", 0)
        except OSError as exc:
            return "refused: errno %d" % exc.errno
        with open("/bin/true", "rb") as f:
            os.write(fd, f.read())
        try:
            subprocess.run(["/proc/self/fd/%d" % fd], pass_fds=(fd,), check=True)
            return "executed"
        except OSError as exc:
            return "refused: errno %d" % exc.errno

    def threads(self, n):
        """Threads and processes still work under the filter (clone without
        namespace flags; clone3 answers ENOSYS and libc falls back)."""
        import threading
        out = []
        ts = [threading.Thread(target=lambda: out.append(1)) for _ in range(int(n))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        p = subprocess.run(["/bin/echo", "child"], capture_output=True, text=True)
        return "%d threads, %s" % (len(out), p.stdout.strip())

    def balloon(self, mb):
        chunks = []
        for _ in range(int(mb)):
            chunks.append(bytearray(1 << 20))
        return "allocated %d MiB" % len(chunks)

    def forkbomb(self, n):
        children = 0
        try:
            for _ in range(int(n)):
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                children += 1
            return "forked %d" % children
        except OSError as exc:
            return "stopped after %d: %s" % (children, exc)

    def spin(self, seconds):
        end = time.time() + float(seconds)
        t0 = os.times()
        while time.time() < end:
            pass
        t1 = os.times()
        return (t1.user - t0.user) + (t1.system - t0.system)

    def daemon(self):
        subprocess.Popen(["sleep", "1000"], start_new_session=True)
        return "left a daemon behind"

    def whoami(self):
        return {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(), "hostname": socket.gethostname(),
                "tmpdir": os.environ.get("TMPDIR", ""), "scratch": os.environ.get("MODELNODES_SCRATCH", ""),
                "model": os.path.dirname(os.path.abspath(__file__))}

    def execwritten(self, path):
        """Write a program (a copy of /bin/true) and run it."""
        try:
            with open("/bin/true", "rb") as src, open(path, "wb") as dst:
                dst.write(src.read())
            os.chmod(path, 0o755)
            subprocess.run([path], check=True)
            return "executed"
        except OSError as exc:
            return "refused: %s" % exc

    def filldisk(self, path):
        """Write 1 MiB at a time until the disk refuses."""
        written = 0
        chunk = b"x" * (1 << 20)
        try:
            with open(path, "wb") as f:
                while written < (1 << 30):
                    f.write(chunk)
                    f.flush()
                    written += 1
            return "wrote %d MiB" % written
        except OSError as exc:
            return "refused after %d MiB: %s" % (written, exc)
        finally:
            try:
                os.remove(path)
            except OSError:
                pass

    def mounts(self):
        """The mount points the worker sees (mountinfo's fifth field)."""
        with open("/proc/self/mountinfo") as f:
            return [line.split()[4] for line in f]

    def fds(self):
        """Every descriptor the worker holds, with what it points at. The
        listing's own (closed once listed) are left out."""
        out = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                out[fd] = os.readlink("/proc/self/fd/" + fd)
            except FileNotFoundError:
                pass
        return out

    def devices(self):
        """What a model with reserved devices sees: /dev, the device plugin's
        variable (MODELNODES_TESTDEV), each testdev node opened for writing
        and given a line, and a file written in each directory of /testdev."""
        me = os.environ.get("MODELNODES_TESTDEV", "")
        out = {"env": me, "dev": [], "wrote": {}, "mounts": {}}
        for root, dirs, files in os.walk("/dev"):
            out["dev"] += [os.path.join(root, n) for n in dirs + files]
        for path in out["dev"]:
            if os.path.basename(path).startswith("testdev"):
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
                    try:
                        os.write(fd, ("written by %s\n" % me).encode())
                    finally:
                        os.close(fd)
                    out["wrote"][path] = "wrote"
                except OSError as exc:
                    out["wrote"][path] = "refused: %s" % exc
        if os.path.isdir("/testdev"):
            for name in os.listdir("/testdev"):
                try:
                    with open(os.path.join("/testdev", name, "out"), "w") as f:
                        f.write("written by %s" % me)
                    out["mounts"][name] = "wrote"
                except OSError as exc:
                    out["mounts"][name] = "refused: %s" % exc
        return out

    def opendev(self, path):
        """Open a device node for writing (nothing is written)."""
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NOCTTY))
            return "opened"
        except OSError as exc:
            return "refused: %s" % exc

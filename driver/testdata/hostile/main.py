"""A model that tries to escape its sandbox. Each method attempts one thing
and returns what happened as text, so the test can assert the attempt failed
inside the sandbox while the runner kept serving."""

import ctypes
import os
import socket
import subprocess
import time

from base import Base


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

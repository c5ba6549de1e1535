"""The project's test filesystem: counting FUSE mounts of one backing directory (see countfs.py).

    with Host(backing, attr_timeout=1.0) as host:     # one "NFS client"
        ... use host.mnt ...; host.counts() -> {op: n}; host.reset()

`available()` says why FUSE cannot be used here (None when it can); tests skip with that reason.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
COUNTFS = os.path.join(HERE, "countfs.py")
# The operations a file server sees for tree paths (getattr includes the kernel's lookups).
TREE_OPS = ("getattr", "readdir", "opendir", "open", "create", "read", "write", "link", "rename", "unlink",
            "symlink", "readlink", "mkdir", "rmdir", "utimens", "truncate", "chmod", "fsync", "access",
            "mknod", "statfs")


def available():
    """None when a counting mount can be made, else the reason it cannot."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if not shutil.which("fusermount") and not shutil.which("fusermount3"):
        return "no fusermount (apt-get install fuse3)"
    try:
        import fuse  # noqa: F401
    except (ImportError, OSError, EnvironmentError) as exc:
        return f"fusepy or libfuse2 missing ({exc}): pip install fusepy; apt-get install libfuse2"
    return None


# What a metadata server (a Lustre MDS) sees: file data (read, write) goes to the object
# servers instead.
META_OPS = tuple(op for op in TREE_OPS if op not in ("read", "write"))


def tree_ops(counts):
    return sum(n for op, n in counts.items() if op in TREE_OPS)


def meta_ops(counts):
    return sum(n for op, n in counts.items() if op in META_OPS)


class Host:
    """One counting mount of `backing`: a host whose attribute/entry caches last `attr_timeout`."""

    def __init__(self, backing, attr_timeout=1.0, entry_timeout=None, mnt=None):
        self.backing = os.path.abspath(backing)
        self.attr_timeout = attr_timeout
        self.entry_timeout = attr_timeout if entry_timeout is None else entry_timeout
        self._own = tempfile.mkdtemp(prefix="fsim-")
        self.mnt = mnt or os.path.join(self._own, "mnt")
        os.makedirs(self.mnt, exist_ok=True)
        self.sock = os.path.join(self._own, "counts.sock")
        self.proc = None

    def start(self, timeout=30.0):
        self.proc = subprocess.Popen(
            [sys.executable, COUNTFS, self.backing, self.mnt, self.sock,
             "--attr-timeout", str(self.attr_timeout), "--entry-timeout", str(self.entry_timeout)],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self._own, "countfs.log"), "wb"))
        deadline = time.monotonic() + timeout
        while not (os.path.ismount(self.mnt) and os.path.exists(self.sock)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = open(os.path.join(self._own, "countfs.log"), errors="replace").read()
                self.stop()
                raise RuntimeError(f"countfs did not mount: {log[-2000:]}")
            time.sleep(0.02)
        self.reset()
        return self

    def _ask(self, cmd):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        try:
            s.connect(self.sock)
            s.sendall(cmd.encode())
            s.shutdown(socket.SHUT_WR)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        return json.loads(data)

    def counts(self):
        return self._ask("get")

    def reset(self):
        """Zero the counters; returns the counts before."""
        return self._ask("reset")

    def log(self):
        """[(op, path)] the server saw since the last reset (paths relative to the mount)."""
        return [tuple(x) for x in self._ask("log")]

    def ops(self):
        return tree_ops(self.counts())

    def drop_caches(self):
        """A cold client: forget cached attributes/entries (remount, the honest way)."""
        self.stop(keep_dir=True)
        self.start()

    def path(self, *parts):
        return os.path.join(self.mnt, *parts)

    def stop(self, keep_dir=False):
        if os.path.ismount(self.mnt):
            for cmd in (["fusermount", "-u", self.mnt], ["fusermount", "-uz", self.mnt], ["umount", "-l", self.mnt]):
                if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                    break
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if not keep_dir:
            shutil.rmtree(self._own, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

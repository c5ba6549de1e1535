"""A counting FUSE passthrough: one mount = one NFS client ("host") of a shared backing directory.

Every request that reaches this process is one the file server would have seen; the kernel's
FUSE attribute and entry caches (the `attr_timeout` / `entry_timeout` mount options) answer the
rest, as an NFS client's attribute cache (acregmax) and dentry cache do. Two mounts of one
backing directory are two hosts with their own stale caches.

Counters are served on a Unix socket (never through the mount, so reading them costs nothing):
send `get` for a JSON object {op: count}, `reset` to zero them, `log` for the [op, path] list
since the last reset. A READDIR of a long directory counts one per 256 entries (the pages
of 32 KiB an NFS server would send).

Run: python countfs.py BACKING MOUNTPOINT SOCKET [--attr-timeout S] [--entry-timeout S]
"""

import argparse
import errno
import json
import os
import socket
import sys
import threading

from fuse import FUSE, FuseOSError, Operations  # fusepy, on libfuse2

LOG_MAX = 200000
READDIR_PAGE = 256  # entries per READDIR(PLUS) reply a server sends (about 32 KiB)
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class Counting(Operations):
    """Passthrough to `root`, counting each operation by name."""

    use_ns = True  # fusepy: utimens times and st_*time in nanoseconds

    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.counts = {}
        self.log = []  # (op, path) since the last reset, for `log` (bounded)
        self.lock = threading.Lock()

    def __call__(self, op, path, *args):
        if op not in ("init", "destroy"):
            with self.lock:
                self.counts[op] = self.counts.get(op, 0) + 1
                if len(self.log) < LOG_MAX:
                    self.log.append((op, path))
        try:
            return super().__call__(op, path, *args)
        except OSError as exc:
            if isinstance(exc, FuseOSError):
                raise
            raise FuseOSError(exc.errno or errno.EIO) from None

    def _p(self, path):
        return self.root + path

    # metadata
    def getattr(self, path, fh=None):
        st = os.fstat(fh) if fh is not None else os.lstat(self._p(path))
        out = {k: getattr(st, k) for k in ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid",
                                           "st_size", "st_atime", "st_mtime", "st_ctime")}
        out["st_atime"], out["st_mtime"], out["st_ctime"] = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        return out

    def access(self, path, amode):
        if not os.access(self._p(path), amode):
            raise FuseOSError(errno.EACCES)

    def readdir(self, path, fh):
        names = os.listdir(self._p(path))
        extra = len(names) // READDIR_PAGE  # a long directory costs one reply per page
        if extra:
            with self.lock:
                self.counts["readdir"] = self.counts.get("readdir", 0) + extra
        return [".", ".."] + names

    def opendir(self, path):
        return 0

    def releasedir(self, path, fh):
        return 0

    def readlink(self, path):
        return os.readlink(self._p(path))

    def statfs(self, path):
        st = os.statvfs(self._p(path))
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                            "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def chmod(self, path, mode):
        os.chmod(self._p(path), mode)

    def chown(self, path, uid, gid):
        os.lchown(self._p(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._p(path), ns=times, follow_symlinks=False) if times else os.utime(self._p(path))

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._p(path), length)

    # namespace
    def mkdir(self, path, mode):
        os.mkdir(self._p(path), mode)

    def rmdir(self, path):
        os.rmdir(self._p(path))

    def mknod(self, path, mode, dev):
        os.mknod(self._p(path), mode, dev)

    def unlink(self, path):
        os.unlink(self._p(path))

    def symlink(self, target, source):
        os.symlink(source, self._p(target))

    def link(self, target, source):
        os.link(self._p(source), self._p(target))

    def rename(self, old, new):
        os.rename(self._p(old), self._p(new))

    # data
    def open(self, path, flags):
        return os.open(self._p(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._p(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0

    def fsync(self, path, datasync, fh):
        (os.fdatasync if datasync else os.fsync)(fh)
        return 0

    def fsyncdir(self, path, datasync, fh):
        return 0


class CountingFUSE(FUSE):
    """fusepy turns utime(path, None)'s UTIME_NOW into a bogus timestamp: pass it through."""

    def utimens(self, path, buf):
        if buf:
            a, m = buf.contents.actime, buf.contents.modtime
            if a.tv_nsec in (UTIME_NOW, UTIME_OMIT) or m.tv_nsec in (UTIME_NOW, UTIME_OMIT):
                def ns(ts, which):
                    return None if ts.tv_nsec == UTIME_OMIT else ts.tv_sec * 10 ** 9 + ts.tv_nsec
                p = self._decode_optional_path(path)
                if a.tv_nsec == UTIME_NOW and m.tv_nsec == UTIME_NOW:
                    return self.operations("utimens", p, None)
                import time as _t
                now = _t.time_ns()
                at = now if a.tv_nsec == UTIME_NOW else ns(a, 0)
                mt = now if m.tv_nsec == UTIME_NOW else ns(m, 1)
                real = self.operations.root + p
                st = os.lstat(real)
                return self.operations("utimens", p, (at if at is not None else st.st_atime_ns,
                                                      mt if mt is not None else st.st_mtime_ns))
        return super().utimens(path, buf)


def serve_counts(fs, sock_path):
    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(8)

    def loop():
        while True:
            conn, _ = srv.accept()
            with conn:
                cmd = conn.recv(64).decode().strip()
                with fs.lock:
                    out = list(fs.log) if cmd == "log" else dict(fs.counts)
                    if cmd == "reset":
                        fs.counts.clear()
                        fs.log.clear()
                conn.sendall(json.dumps(out).encode())

    threading.Thread(target=loop, daemon=True).start()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("backing")
    p.add_argument("mountpoint")
    p.add_argument("socket")
    p.add_argument("--attr-timeout", type=float, default=1.0)
    p.add_argument("--entry-timeout", type=float, default=None)
    a = p.parse_args(argv)
    fs = Counting(a.backing)
    serve_counts(fs, a.socket)
    entry = a.attr_timeout if a.entry_timeout is None else a.entry_timeout
    CountingFUSE(fs, a.mountpoint, foreground=True, nothreads=False, use_ino=True,
                 attr_timeout=a.attr_timeout, entry_timeout=entry, negative_timeout=0,
                 fsname="countfs", subtype="countfs")


if __name__ == "__main__":
    sys.exit(main())

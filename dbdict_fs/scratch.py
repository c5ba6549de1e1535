"""Node-local scratch (`--scratch DIR`): run the experiment in a local copy of its workdir.

Files are synced back to the shared workdir one by one as temp file + rename, so the
shared copy never holds a half-written checkpoint; the worker syncs only while it is not
fenced (at every save and at the end), checking before every file and every chunk; the
worker keeps its heartbeat and its experiment's pings going meanwhile (runner._Attempt.sync_back),
so a sync longer than half the lease does not look like a stopped worker.
"""

import os
import shutil
import tempfile

from .errors import Fenced
from . import jobdir as jd
from .jobdir import replacing


def _files(root):
    for top, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(top, name)
            if os.path.isfile(path) and not os.path.islink(path):
                yield os.path.relpath(path, root)


def copy_atomic(src, dst, keep_alive=None):
    """Copy one file so readers of `dst` see the old or the new file, never a part; in
    chunks, stopping (Fenced) once `keep_alive()` says this worker no longer holds the job."""
    from .workdir import copy_file

    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with replacing(dst) as tmp:
        if not copy_file(src, tmp, keep_alive):
            raise Fenced(f"{dst}: this worker no longer holds the job: sync-back stopped")


class Scratch:
    """A private local copy of a job's workdir."""

    def __init__(self, workdir, base, keep_alive=None):
        """Copy `workdir` under `base`; `keep_alive()` is called between files (the worker's
        heartbeat) and stops the copy, raising Fenced, once it returns False."""
        self.workdir = workdir
        self.keep_alive = keep_alive or (lambda: True)
        self.path = tempfile.mkdtemp(prefix="dbdict-scratch-", dir=base)
        self._synced = {}
        for rel in _files(workdir):
            if os.path.basename(rel).startswith(jd.TMP_PREFIX):
                continue
            self._alive()
            dst = os.path.join(self.path, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(os.path.join(workdir, rel), dst)
            self._synced[rel] = self._signature(dst)

    def _alive(self):
        if not self.keep_alive():
            raise Fenced(f"{self.workdir}: this worker no longer holds the job: scratch copy stopped")

    @staticmethod
    def _signature(path):
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns

    def sync_back(self):
        """Copy new and changed files back to the shared workdir (atomically per file)."""
        for rel in _files(self.path):
            src = os.path.join(self.path, rel)
            try:
                sig = self._signature(src)
            except FileNotFoundError:
                continue
            if self._synced.get(rel) == sig:
                continue
            self._alive()  # a fenced-out worker must not overwrite the new holder's files
            copy_atomic(src, os.path.join(self.workdir, rel), self.keep_alive)
            self._synced[rel] = sig

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)

"""Metric histories (named `histories`, so `dbdict_fs.history` stays the function): the points `channel.log(step, **metrics)` records (DESIGN.md 10).

Fenced like the state: the holder of claim E writes only `history.<E>.jsonl` in the job
directory (one JSON object per line: {"step": s, metric: value, ...}), and every state it
commits records how much of that file is committed, `dbdict.history = {"epoch": E, "bytes": n}`.
Readers read the latest state, then that file up to n bytes only, so a fenced attempt's late
points (appended past n, or to its own older file) never appear. A new holder seeds its file with
the committed bytes of the file the state it resumed from names, and then appends; rev 4: a
holder that takes the job over seeds it instead with every whole line of its predecessor's file
as it stood when it read it (the dead or stolen-from attempt's points up to the takeover, which
its checkpoint may already include), so a killed and resumed job shows its whole curve. A step
logged again (a resume from an older checkpoint) replaces the earlier point: readers keep the
last one. A write cut short (a full disk) is cut back to the last whole batch, so the committed
byte count always ends at a line's end.
"""

import errno
import json
import os

from . import jobdir as jd

def _pointer(state):
    """(epoch, bytes) the state commits, or None when the job never logged a point."""
    ref = (state.get("dbdict") or {}).get("history") if isinstance(state, dict) else None
    if not isinstance(ref, dict):
        return None
    try:
        epoch, size = int(ref["epoch"]), int(ref["bytes"])
    except (KeyError, TypeError, ValueError):
        return None
    return (epoch, size) if epoch >= 0 and size >= 0 else None



def _read_prefix(path, size):
    """The first `size` bytes of `path` (never through a symlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        chunks, left = [], size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class Recorder:
    """The worker's side: appends the child's points to history.<E>.jsonl, stamps commits.

    Nothing is created until the first point arrives, so an experiment that never logs
    costs nothing, and a job that logged before keeps its committed pointer unchanged;
    except after a takeover (DESIGN.md 10 rev 4): when a predecessor's file holds more
    whole lines than the state we resumed from commits (it logged, then died or was
    stolen from), our file starts now with those lines, as that file stood at this read,
    and our next commit names them. A fenced predecessor's later points never show.
    """

    def __init__(self, held):
        self.jobdir, self.epoch = held.jobdir, held.epoch
        self.base = _pointer(held.state)  # what the state we resumed from commits
        self.fd = None
        self.size = 0
        self.dirty = False
        self.seed = None  # the lines our file starts with; None: the base's committed prefix
        names = held.names if getattr(held, "names", None) is not None else None
        try:
            self._take_over(names)
        except OSError:
            self.close()  # a takeover that cannot be read or written keeps the committed points

    def _take_over(self, names):
        epochs = []
        for name in os.listdir(self.jobdir) if names is None else names:
            epoch = jd.history_epoch(name)
            if epoch is not None and epoch < self.epoch and (self.base is None or epoch >= self.base[0]):
                epochs.append(epoch)
        if not epochs:
            return
        path = os.path.join(self.jobdir, jd.history_name(max(epochs)))
        try:
            if self.base is not None and max(epochs) == self.base[0] and os.stat(path).st_size <= self.base[1]:
                return  # the usual resume: every point of the file is committed already
            data = _read_prefix(path, 1 << 62)
        except FileNotFoundError:
            return
        committed = self._committed()
        data = data[: data.rfind(b"\n") + 1]  # whole lines: a torn last line is not a point
        if len(data) > len(committed) and data.startswith(committed):
            self.seed = data
            self._open()

    def _committed(self):
        """The whole lines the state we resumed from commits."""
        if self.base is None:
            return b""
        try:
            seed = _read_prefix(os.path.join(self.jobdir, jd.history_name(self.base[0])), self.base[1])
        except FileNotFoundError:
            return b""
        return seed[: seed.rfind(b"\n") + 1]  # a torn copy: keep whole lines only

    def _open(self):
        path = os.path.join(self.jobdir, jd.history_name(self.epoch))
        seed = self._committed() if self.seed is None else self.seed
        # Only the holder of E ever writes this name: an existing file is our own leftover.
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            self._write(seed)
        except OSError:
            self.close()  # no file without its seed: the next append opens it again
            self.size = 0
            raise
        self._remove_older()

    def _remove_older(self):
        """Files older than the one we seeded from are named by no state we could be hidden
        behind (pointers only grow along the states), so they can go."""
        if self.base is None:
            return
        for name in os.listdir(self.jobdir):
            epoch = jd.history_epoch(name)
            if epoch is not None and epoch < self.base[0]:
                try:
                    os.unlink(os.path.join(self.jobdir, name))
                except OSError:
                    pass

    def _write(self, data):
        """Append all of `data`, or (OSError) none of it: a short write on a full disk is
        cut back, so a later append never follows a partial line and the byte count the
        next commit names ends at a line's end."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:
            try:
                os.ftruncate(self.fd, self.size)
                os.lseek(self.fd, self.size, os.SEEK_SET)
            except OSError:
                self.close()  # cannot cut it back: append nothing more (stamps name self.size)
                self.broken = True
            raise
        self.size += len(data)
        self.dirty = self.dirty or bool(data)

    broken = False

    def append(self, points):
        """Points from the child: a list of {"step": s, metric: value, ...}."""
        lines = []
        for point in points if isinstance(points, list) else ():
            if isinstance(point, dict) and "step" in point and len(point) > 1:
                lines.append(json.dumps(point, allow_nan=True) + "\n")
        if not lines or self.broken:
            return
        try:
            if self.fd is None:
                self._open()
            self._write("".join(lines).encode("utf-8"))
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
                raise
            # The points are lost, never half-committed: the stamp names what was written.

    def stamp(self, state):
        """Before committing `state`: make our points durable and record how many bytes."""
        if self.fd is None:
            return
        if self.dirty:
            try:
                os.fsync(self.fd)
            except OSError:
                return  # keep the state's previous pointer: only durable bytes are named
            self.dirty = False
        state.setdefault("dbdict", {})["history"] = {"epoch": self.epoch, "bytes": self.size}

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    __del__ = close  # the attempt ends with its _Attempt object


# ---------------------------------------------------------------- readers

def read_points(jobdir, retries=20):
    """The committed points of a job, in the order logged: list of dicts."""
    for _ in range(retries):
        _, state = jd.read_latest_state(jobdir)
        ref = _pointer(state)
        if ref is None:
            return []
        try:
            data = _read_prefix(os.path.join(jobdir, jd.history_name(ref[0])), ref[1])
        except FileNotFoundError:
            continue  # a newer holder moved on since our read of the state: read it again
        points = []
        for line in data.split(b"\n"):
            if line.strip():
                try:
                    point = json.loads(line)
                except ValueError:
                    continue
                if isinstance(point, dict):
                    points.append(point)
        return points
    return []


def rows_of(path, points):
    """(path, step, metric, value) rows; a (step, metric) logged again keeps its last value."""
    latest = {}
    for point in points:
        step = point.get("step")
        for metric, value in point.items():
            if metric != "step":
                latest.pop((step, metric), None)
                latest[(step, metric)] = value
    order = {}
    for _, metric in latest:
        order.setdefault(metric, len(order))
    keys = sorted(latest, key=lambda k: (_step_key(k[0]), order[k[1]]))
    return [(path, step, metric, latest[(step, metric)]) for step, metric in keys]


def _step_key(step):
    return (0, step) if isinstance(step, (int, float)) and not isinstance(step, bool) else (1, str(step))


COLUMNS = ("path", "step", "metric", "value")


def history(jobdir, *, frame=False):
    """The committed history of one job: rows (path, step, metric, value), or a pandas
    DataFrame with those columns when `frame=True`."""
    path = os.fspath(jobdir)
    rows = rows_of(path, read_points(path))
    return to_frame(rows) if frame else rows


def histories(paths, *, frame=False, metrics=None):
    """The rows of several jobs (a job that cannot be read contributes none)."""
    from .errors import DbdictError

    rows = []
    wanted = set(metrics) if metrics else None
    for path in paths:
        try:
            job_rows = history(path)
        except (DbdictError, OSError):
            continue
        rows.extend(r for r in job_rows if wanted is None or r[2] in wanted)
    return to_frame(rows) if frame else rows


def to_frame(rows):
    import pandas

    return pandas.DataFrame(rows, columns=list(COLUMNS))

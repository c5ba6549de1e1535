"""The index: every job of a tree as one row of an in-memory SQLite table `jobs` (DESIGN.md 6).

One column per dotted key (`lr`, `model.arch`, `dbdict.status`, `dbdict.path`), values typed.
An optional cache outside the tree lets a re-query of an unchanged tree skip every job whose
directory has not changed, without opening it (one lstat per job); processes of one node share
one refresh, and a large tree is walked and parsed on every core.
"""

import gc
import json
import marshal
import os
import sqlite3
import stat
import sys
import time

from . import booking
from . import jobdir as jd
from .errors import DbdictError, UsageError
from .where import compile_where, quote

TABLE = "jobs"
# Keys beyond MAX_COLUMNS (SQLite's column limit) live here, one row per (job, key): every
# key stays queryable and filterable however many a tree holds (DESIGN.md 6, rev 4).
EXTRA = "jobs_extra"
EXTRA_KEYS = "jobs_extra_keys"  # the distinct keys of jobs_extra, sorted (a warm query lists them)
PATH, STATUS, ERROR = "dbdict.path", "dbdict.status", "dbdict.error"
NAN = "dbdict.nan"  # comma-separated keys whose value is NaN (NULL in SQL)
SHORT_NAMES = ("status", "path")  # always dbdict.status and dbdict.path, even beside user keys so named
BOOL = "dbdict.bool"  # comma-separated keys whose value is a boolean (1/0 in SQL)
# A directory (or state file) modified less than this long before we read it may change again
# within the same timestamp tick without its mtime moving: such cache entries are re-read.
TRUST_SECONDS = 2.0
MAX_COLUMNS = 1900  # SQLite's default limit is 2000 columns per table
OVERFLOW_SHARE = 100  # in a tree wider than that, keys held by < 1/100 of its jobs go to jobs_extra
CACHE_MAGIC = b"dbdict_fs index cache 3\n"  # 2: jobs_extra, dbdict.bool; 3: one meta layout
# A job's entry in the cache ("meta"): one plain tuple whose fields these indices name. Plain,
# because marshal stores no tuple subclass, and turning 100k entries into records on every
# load would cost as much as unmarshalling them. DIR_KEY: the job directory's (inode,
# mtime_ns, ctime_ns); TRUSTED: it was older than TRUST_SECONDS when read; STATE_EPOCH and
# CLAIM_EPOCH: the listing's latest state and top claim; WRITTEN: the latest state's status
# (`corrupt` when unreadable); KEYSET: which of the cache's keysets the row has; ROWID: its
# row in the cached table. Jobs read in this build have KEYSET and ROWID None.
DIR_KEY, TRUSTED, STATE_EPOCH, CLAIM_EPOCH, WRITTEN, KEYSET, ROWID = range(7)
# A walk goes parallel (os.cpu_count() processes) when it has at least this many directories
# to split and, by a cheap estimate, this many jobs to read ($DBDICT_PARALLEL_MIN_JOBS):
# below it, forking and sending rows back costs more than it saves (bench/query.py).
PARALLEL_MIN_DIRS = 8
PARALLEL_MIN_JOBS = 2000
LOCK_WAIT = 600.0  # seconds to wait for another process's refresh before going on alone
LOCK_LOOK = 0.5  # seconds between looks at whether the refresh we wait for is stopped

_INT64 = 2 ** 63
_KINDS = {int: "INTEGER", bool: "INTEGER", float: "REAL", str: "TEXT"}


# ---------------------------------------------------------------- reading one job

def flatten(data, prefix="", out=None):
    """Nested mappings -> one dict of dotted keys; lists as JSON text, other scalars as is."""
    if out is None:
        out = {}
    for key, value in data.items():
        key = prefix + (key if type(key) is str else str(key))
        kind = type(value)
        if kind is dict:
            if value:
                flatten(value, key + ".", out)
            else:
                out[key] = "{}"
        elif kind is str or value is None:
            out[key] = value
        elif kind is bool:
            out[key] = value  # SQLite stores it as 1/0: say which keys were booleans
            out[BOOL] = f"{out[BOOL]},{key}" if BOOL in out else key
        elif kind is int:
            out[key] = value if -_INT64 <= value < _INT64 else str(value)  # SQLite ints are 64-bit
        elif kind is float:
            out[key] = None if value != value else value  # SQLite stores NaN as NULL anyway
            if value != value:  # ... so say which keys were NaN: output shows them as nan
                out[NAN] = f"{out[NAN]},{key}" if out.get(NAN) else key
        elif kind is list or kind is tuple:
            out[key] = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
        else:  # a YAML-only type in a hand-edited file (date, bytes, set)
            out[key] = str(value)
    return out


def _read_fd(fd, size):
    """Read a whole file from `fd`, at most MAX_FILE_BYTES + 1 bytes."""
    cap = jd.MAX_FILE_BYTES + 1
    chunks, total = [], 0
    want = min(size + 1, cap)
    while total < cap:
        chunk = os.read(fd, max(want - total, 65536) if total else want)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_state(raw, path, epoch):
    """Parse and validate a state file's bytes, as jobdir.read_state_file does, but faster.

    The fast path is plain `json.loads` when the file is too small to exceed jobdir's node
    budget and has too few brackets to exceed its depth limit; anything else goes through
    jobdir.parse_text (JSON, then safe YAML, with the size checks), so the verdicts agree.
    """
    if len(raw) > jd.MAX_FILE_BYTES:
        raise jd.CorruptJob(path, f"larger than {jd.MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise jd.CorruptJob(path, "not UTF-8 text") from None
    data = _MISSING
    if len(raw) <= jd.MAX_NODES and raw.count(b"{") + raw.count(b"[") <= jd.MAX_DEPTH:
        try:
            data = json.loads(text)
        except ValueError:
            pass
    if data is _MISSING:
        data = jd.parse_text(text, path)
    return jd.validate_state(data, path, epoch)


_MISSING = object()


def read_job(jobdir, names):
    """One job -> (row, state_epoch, claim_epoch, written, state_time). Never raises for the
    job's own files: a bad job is `corrupt` (written "corrupt", claim_epoch 0).

    `written` is the latest state's status: the row's status is derived from it by booking
    later (judge_rows), for every job of a build at once. `state_time` is the state file's
    max(mtime, ctime) from an fstat before reading, or None (for TRUST_SECONDS).
    """
    listing = jd.Listing(names)
    epoch = state_time = None
    try:
        for _ in range(20):
            epoch = listing.state_epoch
            if epoch is None:
                raise jd.CorruptJob(jobdir, "no state.<E>.yaml file")
            path = os.path.join(jobdir, jd.state_name(epoch))
            try:
                # fstat before reading: a later write moves the key (see TRUST_SECONDS)
                fd, st = jd.open_regular(path)
            except FileNotFoundError:  # a newer holder removed it: list again (DESIGN.md 3)
                listing = jd.list_job(jobdir)
                continue
            try:
                raw = _read_fd(fd, st.st_size)
            finally:
                os.close(fd)
            state_time = max(st.st_mtime, st.st_ctime)
            break
        else:
            raise jd.CorruptJob(jobdir, "state files keep disappearing while being read")
        state = parse_state(raw, path, epoch)
    except DbdictError as exc:
        return corrupt_row(jobdir, getattr(exc, "reason", str(exc))), epoch, 0, "corrupt", state_time
    except OSError as exc:
        return corrupt_row(jobdir, exc.strerror or str(exc)), epoch, 0, "corrupt", state_time
    row = flatten(state)
    row[PATH] = jobdir
    return row, epoch, listing.claim_epoch, state["dbdict"]["status"], state_time


def judge_rows(jobs, fields):
    """The derived status (DESIGN 3) of the jobs whose status booking must judge: `jobs` =
    [(jobdir, meta, key)], `fields(key)` -> the row's (dbdict.pgid, dbdict.shepherd), asked
    only of those. Returns [(status, key)] for those only; the others' is the written one.

    Booking decides, as one one-shot view (booking.derived_statuses): one claim read per
    held job and one batched squeue call for the cluster tasks their holders' tokens name.
    """
    needs = booking.needs_judging
    live = [(jobdir, meta, key) for jobdir, meta, key in jobs
            if needs(meta[CLAIM_EPOCH], meta[STATE_EPOCH], meta[WRITTEN])]
    if not live:
        return []
    asks = []
    for jobdir, meta, key in live:
        pgid, shepherd = fields(key)
        if isinstance(shepherd, str):  # flatten() keeps a list as JSON text
            try:
                shepherd = json.loads(shepherd)
            except ValueError:
                shepherd = None
        asks.append((jobdir, meta[CLAIM_EPOCH], booking.Written(meta[STATE_EPOCH], meta[WRITTEN], pgid, shepherd)))
    return list(zip(booking.derived_statuses(asks), (key for _, _, key in live)))


def corrupt_row(jobdir, reason):
    """A corrupt job's row: its config's keys when config.yaml is readable, status and reason."""
    row = {}
    try:
        flatten(jd.read_config(jobdir), "", row)
    except (DbdictError, OSError):
        pass
    row[STATUS] = "corrupt"
    row[ERROR] = reason
    row[PATH] = jobdir
    return row


# ---------------------------------------------------------------- the table

def _column_type(types):
    kinds = {_KINDS.get(t, "TEXT") for t in types if t is not type(None)}
    # One kind -> that type; mixed columns get none, so every value keeps its own type
    # (INTEGER/REAL/TEXT affinity would convert some of them).
    return kinds.pop() if len(kinds) == 1 else ""


def fill_table(conn, rows):
    """Create tables `jobs` and `jobs_extra` from flat row dicts (rowid = position + 1).
    Returns (keysets, overflow).

    Columns are typed from every value they hold; SQLite column names ignore case, so keys
    that differ only in case share the column spelled first in sorted order, and a job that
    has two such keys itself is made corrupt. A tree with more keys than MAX_COLUMNS keeps
    every `dbdict.` key and every key at least 1/OVERFLOW_SHARE of its rows hold as columns
    (the most common first, at most MAX_COLUMNS); the others overflow into `jobs_extra(job,
    key, value)`, job = jobs.rowid, key spelled as its column would be: `overflow` lists them.
    """
    groups = {}
    for i, row in enumerate(rows, 1):
        keys = tuple(row)
        group = groups.get(keys)
        if group is None:
            groups[keys] = group = []
        group.append((i, *row.values()))
    for keys in [k for k in groups if len({x.lower() for x in k}) < len(k)]:
        for item in groups.pop(keys):
            row = rows[item[0] - 1]
            bad = corrupt_row(row[PATH], "keys that differ only in case (SQLite column names ignore case)")
            rows[item[0] - 1] = bad
            groups.setdefault(tuple(bad), []).append((item[0], *bad.values()))
    spelling, types, counts = {}, {}, {}
    for keys, group in groups.items():
        columns = list(zip(*group))
        for j, key in enumerate(keys, 1):
            low = key.lower()
            if low not in spelling or key < spelling[low]:
                spelling[low] = key
            types.setdefault(low, set()).update(map(type, columns[j]))
            counts[low] = counts.get(low, 0) + len(group)
    for name in (PATH, STATUS):
        spelling.setdefault(name, name)
        types.setdefault(name, {str})
    overflow = {}
    if len(spelling) > MAX_COLUMNS:
        # A tree too wide for one table: the keys fewer than 1% of its jobs hold (per-job
        # metrics) go beside it, so the rows' column sets stay few (one INSERT statement
        # each) and the table narrow; then, beyond MAX_COLUMNS, the rarest others.
        rare = len(rows) / OVERFLOW_SHARE
        keep = sorted(spelling, key=lambda low: (not low.startswith("dbdict."), -counts.get(low, 0), low))
        for i, low in enumerate(keep):
            if i >= MAX_COLUMNS or (counts.get(low, 0) < rare and not low.startswith("dbdict.")
                                    and low not in (PATH, STATUS, ERROR)):
                overflow[low] = spelling.pop(low)
    names = sorted(spelling.values(), key=lambda n: (n.startswith("dbdict."), n))
    decls = ", ".join(f"{quote(n)} {_column_type(types[n.lower()])}".rstrip() for n in names)
    conn.execute(f"CREATE TABLE {TABLE} ({decls})")
    conn.execute(f"CREATE TABLE {EXTRA} (job INTEGER NOT NULL, key TEXT NOT NULL, value, "
                 f"PRIMARY KEY (job, key)) WITHOUT ROWID")
    conn.execute(f"CREATE TABLE {EXTRA_KEYS} (key TEXT PRIMARY KEY) WITHOUT ROWID")
    extra, inserts = [], groups
    if overflow:  # rows that differ only in overflow keys share one INSERT
        inserts = {}
        for keys, group in groups.items():
            keep = [j for j, k in enumerate(keys, 1) if k.lower() in spelling]
            more = [(j, overflow[k.lower()]) for j, k in enumerate(keys, 1) if k.lower() in overflow]
            extra.extend((g[0], key, g[j]) for g in group for j, key in more)
            inserts.setdefault(tuple(keys[j - 1] for j in keep), []).extend(
                (g[0], *(g[j] for j in keep)) for g in group)
    for keys, group in inserts.items():
        keep = [j for j, k in enumerate(keys, 1) if k.lower() in spelling]
        if len(keep) < len(keys):
            group = [(g[0], *(g[j] for j in keep)) for g in group]
            keys = tuple(keys[j - 1] for j in keep)
        cols = ", ".join(quote(spelling[k.lower()]) for k in keys)
        marks = ", ".join("?" * (len(keys) + 1))
        conn.executemany(f"INSERT INTO {TABLE} (rowid, {cols}) VALUES ({marks})", group)
    overflow = sorted(overflow.values())
    if extra:
        extra.sort()
        conn.executemany(f"INSERT INTO {EXTRA} (job, key, value) VALUES (?, ?, ?)", extra)
        conn.executemany(f"INSERT INTO {EXTRA_KEYS} (key) VALUES (?)", [(k,) for k in overflow])
    conn.commit()
    keysets = {keys: n for n, keys in enumerate(groups)}  # every row's keys, as the rows are now
    return keysets, overflow


# ---------------------------------------------------------------- the cache

def cache_dir():
    """Where index caches live: $DBDICT_CACHE_DIR, else $XDG_CACHE_HOME/dbdict_fs (~/.cache)."""
    path = os.environ.get("DBDICT_CACHE_DIR")
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "dbdict_fs")
    return path


def cache_path(tree):
    """One cache file per (absolute tree, tree as given): dbdict.path keeps the user's spelling."""
    import hashlib

    key = f"{os.path.abspath(tree)}\0{tree}".encode("utf-8", "surrogateescape")
    return os.path.join(cache_dir(), f"index-{hashlib.sha1(key).hexdigest()[:24]}.bin")


def _load_cache(path, tree, tree_dev):
    """(header, db bytes) of a cache file for this tree, or None if absent or unusable."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    n = len(CACHE_MAGIC)
    if blob[:n] != CACHE_MAGIC or len(blob) < n + 8:
        return None
    size = int.from_bytes(blob[n:n + 8], "little")
    try:
        header = marshal.loads(blob[n + 8:n + 8 + size])
    except (EOFError, ValueError, TypeError):
        return None
    db = blob[n + 8 + size:]
    if (not isinstance(header, dict) or header.get("tree") != tree or header.get("dev") != tree_dev
            or header.get("abs") != os.path.abspath(tree) or header.get("db_size") != len(db)):
        return None
    return header, db


def _write_cache(path, header, conn):
    """Replace the cache file as a whole (temp file + rename): readers see old or new."""
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        db = conn.serialize()
        header = dict(header, db_size=len(db))
        meta = marshal.dumps(header)
        with jd.replacing(path) as tmp, open(tmp, "wb") as f:
            f.write(CACHE_MAGIC + len(meta).to_bytes(8, "little"))
            f.write(meta)
            f.write(db)
    except (OSError, sqlite3.Error, ValueError):
        pass  # the cache is only an optimization: a read-only or full disk is not an error


# ---------------------------------------------------------------- one refresh per node

def lock_dir():
    """Where the node-local refresh locks live: $DBDICT_LOCK_DIR, else /tmp/dbdict_fs-<uid>
    (created 0700). Local disk, never the tree nor the cache dir, which may be an NFS home."""
    path = os.environ.get("DBDICT_LOCK_DIR")
    if path:
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path
    path = f"/tmp/dbdict_fs-{os.getuid()}"
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    # Another account could have made this name first: use only a private directory of ours.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path}: not a private directory of this user")
    return path


def lock_path(cache_file):
    """The node-local lock file of one cache file (one lock per cache key)."""
    import hashlib

    return os.path.join(lock_dir(), f"index-{hashlib.sha1(os.fsencode(cache_file)).hexdigest()[:24]}.lock")


class _NodeLock:
    """The lock that serializes refreshes of one cache file among the processes of a node
    (DESIGN 4's last bullet: filelock, on local disk). Correctness never depends on it: when
    it cannot be had, the refresh goes on without it."""

    def __init__(self, cache_file):
        self.cache_file = cache_file
        self.fd = self.lock = None
        self.waited_since = None  # time.time() when we found it held and began to wait

    def acquire(self):
        try:
            path = lock_path(self.cache_file)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return
        import fcntl

        # Uncontended (the usual case), take the flock that filelock itself takes on this file:
        # importing filelock costs ~50 ms of start-up, more than a warm query of 10k jobs.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.fd = fd
            return
        except BlockingIOError:
            os.close(fd)  # held by another process of this node: wait for it with filelock
        except OSError:
            os.close(fd)
            return
        self.waited_since = time.time()
        try:
            import filelock

            lock = filelock.FileLock(path)
        except ImportError:
            return
        # Wait for a holder that makes progress, never for a stopped one (SIGSTOP, Ctrl-Z):
        # its refresh may never come, so go on alone (the lock is only an optimization).
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                lock.acquire(timeout=min(LOCK_LOOK, max(0.0, deadline - time.monotonic())))
                self.lock = lock
                return
            except OSError:  # filelock.Timeout is an OSError (TimeoutError)
                pass
            if time.monotonic() >= deadline or _holder_stopped(path):
                return

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the flock
            self.fd = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _holder_stopped(path):
    """Whether every process holding the flock on `path` is stopped by a signal (state T in
    /proc: SIGSTOP, Ctrl-Z), read from /proc/locks; False when it cannot be told."""
    try:
        st = os.stat(path)
        with open("/proc/locks", "rb") as f:
            lines = f.read().split(b"\n")
    except OSError:
        return False
    ours = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}".encode()
    holders = set()
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 12345 08:01:4567 0 EOF" (a blocked waiter's line has "->"
        # in the second field): the holder's pid, then the file's device and inode
        if len(fields) >= 6 and fields[1] == b"FLOCK" and fields[5] == ours:
            holders.add(int(fields[4]))
    if not holders:
        return False
    from .procs import stat_fields as proc_stat_fields

    return all((proc_stat_fields(pid) or [b""])[0] == b"T" for pid in holders)


def _node():
    return os.uname().nodename


# ---------------------------------------------------------------- building

def build_index(tree, cache=True, progress=False):
    """Index every job below `tree` into an in-memory SQLite table `jobs`. Returns an Index.

    `cache`: reuse and refresh the on-disk cache (outside the tree, see cache_dir()). A job
    whose directory is unchanged since the cache was written (inode, mtime, ctime: every state
    write is tmp + rename, every booking a link, both change it) is reused without opening it,
    one metadata operation per job; its running/booked status is still derived anew. So a
    person's in-place edit of a state file is seen only with `cache=False` (`--no-cache`), or
    once the directory changes. Entries changed within TRUST_SECONDS of being read are
    re-read next time. Processes of one node serialize their refreshes on a local lock; one
    that waited for another's refresh uses the cache it wrote, without walking the tree.
    `progress`: show a bar on stderr when it is a terminal and indexing takes over a second.
    Large trees are walked and parsed by os.cpu_count() processes (DBDICT_PARALLEL_MIN_JOBS).
    """
    tree = os.fspath(tree)  # as given: dbdict.path keeps it (commands give the resolved tree)
    try:
        tree_stat = os.stat(tree)
    except OSError:
        raise UsageError(f"{tree}: no such directory") from None
    if not os.path.isdir(tree):
        raise UsageError(f"{tree}: not a directory")
    builder = _Builder(tree, tree_stat.st_dev, cache, progress)
    # The build makes a few objects per job and no cycles: the cyclic collector, run again
    # and again over them, costs more than a third of unpacking a child's rows.
    collecting = gc.isenabled()
    gc.disable()
    try:
        index = builder.build()
    finally:
        if collecting:
            gc.enable()
        builder.close()
    return index


def parallel_min_jobs():
    """Fewest jobs (estimated) worth a parallel walk: $DBDICT_PARALLEL_MIN_JOBS or the default."""
    try:
        return max(1, int(os.environ.get("DBDICT_PARALLEL_MIN_JOBS", PARALLEL_MIN_JOBS)))
    except ValueError:
        return PARALLEL_MIN_JOBS


def _send(fd, result):
    """A child's result to its parent, marshalled (rows hold only str, int, float, None)."""
    with open(fd, "wb") as f:
        f.write(marshal.dumps(result))


def _default_signals():
    """A forked child runs none of its parent's signal handlers (a worker's SIGTERM handler is
    the worker's): a signal ends it, and its parent reads its share again or is ending too."""
    import signal

    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)


class _Builder:
    """One indexing run: walk, reuse or read each job, then fill (or patch) the table."""

    def __init__(self, tree, dev, cache, progress):
        self.tree = tree
        self.dev = dev
        self.use_cache = bool(cache) and hasattr(sqlite3.Connection, "serialize")
        self.progress = None
        if progress:
            from .progress import Progress

            self.progress = Progress("indexing", delay=1.0)
        self.count = 0
        self.stats = {"jobs": 0, "read": 0, "reused": 0, "cache": "off", "workers": 1}

    def close(self):
        if self.progress is not None:
            self.progress.close()

    def _tick(self):
        self.count += 1
        if self.progress is not None and not self.count & 255:
            self.progress.update(self.count, None)

    def build(self):
        if not self.use_cache:
            self.start = time.time()
            return self._build(None, None)
        path = cache_path(self.tree)
        lock = _NodeLock(path)
        lock.acquire()
        try:
            self.start = time.time()  # after any wait: TRUST_SECONDS is judged from here
            old = _load_cache(path, self.tree, self.dev)
            self.stats["cache"] = "miss" if old is None else "hit"
            header = old[0] if old else {}
            if (lock.waited_since is not None and header.get("node") == _node()
                    and header.get("started", 0) >= lock.waited_since):
                # Another process of this node refreshed while we waited, from a walk that
                # began after we did (so after any change that ended before we began: read
                # your writes): as fresh as ours would have been, used without walking.
                return self._shared(old)
            return self._build(old, path)
        finally:
            lock.release()

    def _shared(self, old):
        meta = old[0]["meta"]
        conn = sqlite3.connect(":memory:")
        conn.deserialize(old[1])
        self._refresh_live(conn, list(meta.items()))
        self.stats.update(jobs=len(meta), read=0, reused=len(meta), shared=True)
        return Index(conn, self.tree, self.stats)

    def _build(self, old, path):
        old_meta = old[0]["meta"] if old else {}
        kept, fresh, dirs = self._walk(old)
        self.stats.update(jobs=len(kept) + len(fresh), read=len(fresh), reused=len(kept))
        if old and not fresh and len(kept) == len(old_meta):
            conn = sqlite3.connect(":memory:")
            conn.deserialize(old[1])
            self._refresh_live(conn, kept)
            return Index(conn, self.tree, self.stats)
        rows = self._rows(old, kept, fresh)
        for status, row in judge_rows([(row[PATH], m, row) for _, row, m in rows], _held_fields):
            row[STATUS] = status
        conn = sqlite3.connect(":memory:")
        table_rows = [r for _, r, _ in rows]
        keysets, overflow = fill_table(conn, table_rows)  # may turn rows corrupt, in place
        self.stats["overflow_columns"] = len(overflow)
        if self.use_cache:
            meta = {}
            for rowid, ((rel, original, m), row) in enumerate(zip(rows, table_rows), 1):
                if row is not original:  # made corrupt by fill_table: nothing for booking to judge
                    m = m[:CLAIM_EPOCH] + (0, "corrupt")
                meta[rel] = m[:KEYSET] + (keysets[tuple(row)], rowid)
            header = {"tree": self.tree, "abs": os.path.abspath(self.tree), "dev": self.dev, "node": _node(),
                      "written": time.time(), "started": self.start, "meta": meta, "keysets": list(keysets), "dirs": sorted(dirs)}
            _write_cache(path, header, conn)
        return Index(conn, self.tree, self.stats)

    # The walk has two phases. First the parent lists the directories the cache knows hold
    # jobs (the fan-out shards) and keys each entry with one lstat: an entry whose key equals
    # the cache's is reused unopened; the rest (new, changed, or unknown directories) are
    # pending. Then the pending entries are listed and read, by several processes when there
    # are many (a cold walk: every top-level directory is pending).

    def _walk(self, old):
        """Find every job. Returns (kept, fresh, dirs): kept = [(rel, cached meta)] reused
        unopened, fresh = [(rel, row, meta)] read now, dirs = the directories that hold jobs.
        Each meta is a tuple indexed by DIR_KEY ... ROWID (see CACHE_MAGIC)."""
        tree = self.tree
        try:
            with os.scandir(tree) as it:
                entries = list(it)
        except OSError as exc:
            raise UsageError(f"{tree}: {exc.strerror or exc}") from None
        if any(e.name == jd.CONFIG for e in entries):  # the tree is itself one job
            row, epoch, claim_epoch, written, _ = read_job(tree, [e.name for e in entries])
            return [], [(".", row, (None, False, epoch, claim_epoch, written, None, None))], []
        old_meta = old[0]["meta"] if old else {}
        old_dirs = set(old[0].get("dirs", ())) if old else ()
        kept, pending, dirs, stack = [], [], [], []
        self._sort(entries, "", old_meta, old_dirs, kept, pending, stack)
        while stack:
            path, rel, st = stack.pop()
            try:
                with os.scandir(path) as it:
                    entries = list(it)
            except OSError:
                continue
            if any(e.name == jd.CONFIG for e in entries):  # a known directory that is a job now
                pending.append((path, rel, st))
                continue
            dirs.append(rel)
            self._sort(entries, rel + "/", old_meta, old_dirs, kept, pending, stack)
        fresh = []
        workers = self._workers(pending, old_meta)
        if workers > 1:
            self._visit_parallel(pending, workers, old_meta, kept, fresh, dirs)
        else:
            self._visit(pending, old_meta, kept, fresh, dirs)
        return kept, fresh, dirs

    def _sort(self, entries, prefix, old_meta, old_dirs, kept, pending, stack):
        """The subdirectories of one listed directory: reused from the cache (kept), known
        to hold jobs (to `stack`, listed next), or pending (to be listed and read)."""
        use_cache = self.use_cache
        for entry in entries:
            if entry.name[0] == ".":
                continue
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                # Keyed before listing: a change after this moves the key (DESIGN.md 6).
                st = entry.stat(follow_symlinks=False) if use_cache else None
            except OSError:
                continue
            rel = prefix + entry.name
            if use_cache:
                cached = old_meta.get(rel)
                if cached is not None:
                    if cached[TRUSTED] and cached[DIR_KEY] == (st.st_ino, st.st_mtime_ns, st.st_ctime_ns):
                        kept.append((rel, cached))
                        self._tick()
                        continue
                elif rel in old_dirs:
                    stack.append((entry.path, rel, st))
                    continue
            pending.append((entry.path, rel, st))

    def _visit(self, items, old_meta, kept, fresh, dirs):
        """List and read the pending entries `items` [(path, rel, lstat)], descending into
        directories that are not jobs."""
        use_cache = self.use_cache
        stack = list(reversed(items))
        while stack:
            path, rel, st = stack.pop()
            try:
                names = os.listdir(path)
            except OSError:
                continue
            if jd.CONFIG not in names:
                try:
                    with os.scandir(path) as it:
                        entries = list(it)
                except OSError:
                    continue
                dirs.append(rel)
                self._sort(entries, rel + "/", old_meta, (), kept, stack, None)
                continue
            row, epoch, claim_epoch, written, state_time = read_job(path, names)
            dir_key, trusted = None, False
            if use_cache:
                newest = max(st.st_mtime, st.st_ctime, state_time or 0)
                dir_key, trusted = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns), self.start - newest > TRUST_SECONDS
            fresh.append((rel, row, (dir_key, trusted, epoch, claim_epoch, written, None, None)))
            self._tick()

    def _workers(self, pending, old_meta):
        """How many processes should read the pending entries: os.cpu_count() when there are
        at least PARALLEL_MIN_DIRS of them holding, by a cheap estimate, parallel_min_jobs()."""
        cpus = os.cpu_count() or 1
        if cpus < 2 or len(pending) < PARALLEL_MIN_DIRS or not hasattr(os, "fork"):
            return 1
        threading = sys.modules.get("threading")
        if threading is not None and threading.active_count() > 1:
            return 1  # a forked child of a threaded process may inherit a lock held forever
        need = parallel_min_jobs()
        if len(pending) < need:
            # Known jobs count one each; a directory the cache never saw is judged by
            # listing one of them (a job, or a shard of about that many jobs).
            unknown = [path for path, rel, _ in pending if rel not in old_meta]
            per = 1
            if unknown:
                try:
                    names = os.listdir(unknown[0])
                except OSError:
                    names = []
                per = 1 if jd.CONFIG in names else len(names)
            if len(pending) - len(unknown) + len(unknown) * per < need:
                return 1
        return min(cpus, len(pending))

    def _visit_parallel(self, pending, workers, old_meta, kept, fresh, dirs):
        """_visit split over `workers` processes (os.fork; results marshalled over a pipe).
        The parent reads a share itself; a child that fails has its share read again here.
        Children never write the cache: they only walk, parse and send."""
        shares = [pending[i::workers] for i in range(workers)]
        children = {}
        try:
            for share in shares[1:]:
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:  # the child: never returns into the caller
                    code = 1
                    try:
                        os.close(r)
                        _default_signals()
                        self.progress = None
                        k, f, d = [], [], []
                        self._visit(share, old_meta, k, f, d)
                        _send(w, ([rel for rel, _ in k], f, d))
                        code = 0
                    finally:
                        os._exit(code)
                os.close(w)
                children[pid] = (r, share)
            self._visit(shares[0], old_meta, kept, fresh, dirs)
            self.stats["workers"] = workers
            for pid in list(children):
                r, share = children.pop(pid)
                with open(r, "rb") as f:
                    data = f.read()
                _, status = os.waitpid(pid, 0)
                try:
                    if status != 0:
                        raise ValueError(f"exit status {status}")
                    k, f, d = marshal.loads(data)
                    more = [(rel, old_meta[rel]) for rel in k]
                except (ValueError, EOFError, TypeError, KeyError):
                    self.stats["workers"] -= 1
                    self._visit(share, old_meta, kept, fresh, dirs)
                    continue
                kept.extend(more)
                fresh.extend(f)
                dirs.extend(d)
                self.count += len(k) + len(f)
        finally:
            for pid, (r, _) in children.items():  # only after an error in this process
                os.close(r)
                try:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                except OSError:
                    pass

    def _rows(self, old, kept, fresh):
        """Every job's (rel, row, meta), sorted by path: cached rows are read back from the
        cached table, so the table is built exactly as a cold run would build it."""
        out = [(rel, row, meta) for rel, row, meta in fresh]
        if kept:
            conn = sqlite3.connect(":memory:")
            conn.deserialize(old[1])
            cur = conn.execute(f"SELECT rowid, * FROM {TABLE}")
            index = {d[0].lower(): i for i, d in enumerate(cur.description)}
            values = {r[0]: r for r in cur}
            extra = {}
            for job, key, value in conn.execute(f"SELECT job, key, value FROM {EXTRA}"):
                extra.setdefault(job, {})[key.lower()] = value
            conn.close()
            keysets = old[0]["keysets"]
            for rel, meta in kept:
                vals = values[meta[ROWID]]
                more = extra.get(meta[ROWID])
                row = {}
                for key in keysets[meta[KEYSET]]:
                    i = index.get(key.lower())
                    if i is not None:
                        row[key] = vals[i]
                    elif more is not None and key.lower() in more:
                        row[key] = more[key.lower()]
                out.append((rel, row, meta))
        out.sort(key=lambda item: item[0])
        return out

    def _refresh_live(self, conn, kept):
        """Cached jobs that a claim may hold: whether they are stale depends on their holder now."""
        cols = None

        def fields(rowid):
            nonlocal cols
            if cols is None:
                have = {d[1].lower() for d in conn.execute(f"PRAGMA table_info({TABLE})")}
                cols = ", ".join(quote(c) if c in have else "NULL" for c in _HELD_FIELDS)
            return conn.execute(f"SELECT {cols} FROM {TABLE} WHERE rowid = ?", (rowid,)).fetchone()

        updates = judge_rows([(os.path.join(self.tree, rel), meta, meta[ROWID]) for rel, meta in kept], fields)
        if updates:
            conn.executemany(f"UPDATE {TABLE} SET {quote(STATUS)} = ? WHERE rowid = ?", updates)
            conn.commit()


_HELD_FIELDS = ("dbdict.pgid", "dbdict.shepherd")  # what booking.Written takes from a row, beside meta


def _held_fields(row):
    return tuple(row.get(name) for name in _HELD_FIELDS)


# ---------------------------------------------------------------- the Python API

class Index:
    """The jobs of a tree in an in-memory SQLite table `jobs`; rows come back as dicts."""

    def __init__(self, conn, tree, stats=None):
        self.conn = conn
        self.tree = tree
        self.stats = stats or {}
        self._columns = None
        self._extra = {}  # keys kept in jobs_extra (set with _columns)

    def __len__(self):
        return self.conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]

    def __repr__(self):
        return f"<Index of {self.tree!r}: {len(self)} jobs>"

    @property
    def columns(self):
        """Column names, user keys first (sorted), then the `dbdict.` ones; keys kept in
        `jobs_extra` (beyond SQLite's column limit) included."""
        if self._columns is None:
            columns = [r[1] for r in self.conn.execute(f"PRAGMA table_info({TABLE})")]
            self._extra = {}
            try:
                self._extra = dict.fromkeys(k for (k,) in self.conn.execute(f"SELECT key FROM {EXTRA_KEYS}"))
            except sqlite3.OperationalError:  # an index saved before jobs_extra existed
                pass
            if self._extra:
                columns = sorted(columns + list(self._extra), key=lambda n: (n.startswith("dbdict."), n))
            self._columns = columns
        return list(self._columns)

    def column_sql(self, column):
        """The SQL expression of a column (as resolve() returns it): its quoted name, or
        for a key kept in `jobs_extra` the subquery that reads this job's value of it."""
        if self._columns is None:
            self.columns  # noqa: B018 - computes _extra too
        if column not in self._extra:
            return quote(column)
        return (f"(SELECT value FROM {EXTRA} WHERE {EXTRA}.job = {TABLE}.rowid AND "
                f"{EXTRA}.key = '{column.replace(chr(39), chr(39) * 2)}')")

    @property
    def corrupt(self):
        """[(path, reason)] of every job whose files cannot be parsed or do not validate."""
        err = quote(ERROR) if ERROR in self.columns else "NULL"
        return list(self.conn.execute(f"SELECT {quote(PATH)}, {err} FROM {TABLE} "
                                      f"WHERE {quote(STATUS)} = 'corrupt' ORDER BY rowid"))

    def resolve(self, name):
        """The column a user's name means: itself (case-insensitive, as SQLite) or the
        `dbdict.` bookkeeping key of that name (`epoch` -> `dbdict.epoch`). The short names
        `status` and `path` always mean the job's own fields, whatever user keys the tree
        holds (DESIGN.md 6, rev 4); a name in backquotes is the key of that exact name
        (`` `status` `` is a user's key `status`, never dbdict.status)."""
        lower = {c.lower(): c for c in self.columns}
        if len(name) > 2 and name[0] == name[-1] == "`":
            column = lower.get(name[1:-1].lower())
            if column is None:
                raise UsageError(f"unknown column {name}")
            return column
        if name.lower() in SHORT_NAMES:
            return "dbdict." + name.lower()
        for candidate in (name, "dbdict." + name):
            column = lower.get(candidate.lower())
            if column is not None:
                return column
        import difflib

        choices = self.columns + [c[len("dbdict."):] for c in self.columns if c.startswith("dbdict.")]
        close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        if not close:
            user = [c for c in self.columns if not c.startswith("dbdict.")]
            hint = f" (columns: {', '.join(user[:12])}{', ...' if len(user) > 12 else ''})" if user else ""
        raise UsageError(f"unknown column {name!r}{hint}")

    def sql(self, query, params=()):
        """Run any SQL on the index; rows as dicts keyed by the result's column names."""
        return _dicts(self.conn.execute(query, params))

    def select(self, filters=None, where=None, sort=None, limit=None, columns=None):
        """Rows matching every filter (a dict or (key, value) pairs, ANDed) and the `where`
        expression, sorted by `sort` ("key", "-key" or a list, NULLs last), path otherwise."""
        clauses, params = [], []
        if self._columns is None:
            self.columns  # noqa: B018 - also learns which keys live in jobs_extra
        items = filters.items() if isinstance(filters, dict) else (filters or ())
        for key, value in items:
            if isinstance(value, dict):
                for sub, subvalue in flatten(value, key + ".").items():
                    self._equals(sub, subvalue, clauses, params)
            else:
                self._equals(key, value, clauses, params)
        if where is not None:
            sql, where_params = compile_where(where, self.resolve, self.column_sql)
            clauses.append(f"({sql})")
            params.extend(where_params)
        if columns:
            cols = ", ".join(f"{self.column_sql(c)} AS {quote(c)}" if c in self._extra else quote(c)
                             for c in map(self.resolve, columns))
        else:
            cols = f"{TABLE}.rowid, *" if self._extra else "*"
        query = f"SELECT {cols} FROM {TABLE}"
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        order = []
        for key in ([sort] if isinstance(sort, str) else (sort or ())):
            for part in (p.strip() for p in key.split(",")):
                if not part:
                    continue
                desc = part.startswith("-")
                column = self.column_sql(self.resolve(part.lstrip("-+")))
                order.append(f"{column} IS NULL, {column}{' DESC' if desc else ''}")
        query += " ORDER BY " + ", ".join(order + [f"{TABLE}.rowid"])
        if limit is not None:
            query += " LIMIT ?"
            params.append(int(limit))
        if columns or not self._extra:
            return self.sql(query, params)
        return self._with_extra(self.conn.execute(query, params))

    def _with_extra(self, cursor):
        """Rows of a `SELECT rowid, *` with each job's keys from jobs_extra added."""
        names = [d[0] for d in cursor.description][1:]
        rows = {r[0]: dict(zip(names, r[1:])) for r in cursor}
        if len(rows) > 500:  # many rows: one pass over the side table
            found = self.conn.execute(f"SELECT job, key, value FROM {EXTRA}")
        else:  # a few: their own entries only (the primary key starts with job)
            found = self.conn.execute(f"SELECT job, key, value FROM {EXTRA} WHERE job IN "
                                      f"({', '.join('?' * len(rows))})", list(rows))
        for job, key, value in found:
            row = rows.get(job)
            if row is not None:
                row[key] = value
        return list(rows.values())

    def _equals(self, key, value, clauses, params):
        column = self.column_sql(self.resolve(key))
        if value is None:
            clauses.append(f"{column} IS NULL")
            return
        if isinstance(value, (list, tuple)):
            value = json.dumps(list(value), ensure_ascii=False, separators=(",", ":"), default=str)
        clauses.append(f"{column} = ?")
        params.append(value)

    def filter_by(self, **filters):
        """Rows whose keys equal the values given: filter_by(lr=0.01, **{"model.arch": "x"})."""
        return self.select(filters)

    def where(self, expr):
        """Rows matching a --where expression: `lr > 0.01 and model.arch == "resnet"`."""
        return self.select(where=expr)

    def all_ordered_by(self, key):
        """Every row sorted by `key` ("-key" for descending)."""
        return self.select(sort=key)

    def save(self, path):
        """Export the index to a SQLite file, replaced as a whole (temp file + rename)."""
        path = os.fspath(path)
        with jd.replacing(path) as tmp:
            target = sqlite3.connect(tmp)
            try:
                self.conn.commit()
                self.conn.backup(target)
            finally:
                target.close()
        return path

    def histories(self, filters=None, where=None, *, metrics=None, frame=False):
        """Metric histories (DESIGN.md 10) of the selected jobs: rows (path, step, metric,
        value), or a pandas DataFrame with `frame=True`. Reads each job's history file."""
        from .histories import histories

        paths = [r["dbdict.path"] for r in self.select(filters, where, columns=["dbdict.path"])]
        return histories(paths, metrics=metrics, frame=frame)

    def to_pandas(self, query=None, params=()):
        """A pandas DataFrame of the table (or of a query); pandas is optional."""
        try:
            import pandas
        except ImportError:
            raise UsageError("to_pandas() needs pandas: pip install pandas") from None
        return pandas.read_sql_query(query or f"SELECT * FROM {TABLE} ORDER BY rowid", self.conn, params=params)


def _dicts(cursor):
    if cursor.description is None:
        return []
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor]

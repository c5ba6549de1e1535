"""One job directory: the names of its files, and reading and writing its state files.

Everything that spells a per-job file name lives here (DESIGN.md 1 and 3), so no other
module builds `state.<E>.yaml` or `claim.<E>` by hand.
"""

import contextlib
import errno
import json
import os
import re
import signal
import stat

from .errors import CorruptJob, JobNotFound, WriteError

CONFIG = "config.yaml"
STATE_LINK = "state.yaml"
STDOUT = "stdout"
STDERR = "stderr"
WORKDIR = "workdir"
META_DIR = ".dbdict"

STATUSES = ("ready", "running", "done", "failed", "canceled", "pruned")  # pruned: DESIGN.md 11
# Statuses the index and status commands derive; they are never written to a state file.
DERIVED_STATUSES = ("booked", "stale", "corrupt")

MAX_FILE_BYTES = 16 * 1024 * 1024  # a state or config file larger than this is corrupt
MAX_NODES = 1_000_000  # values (counting shared YAML aliases each time) in one file
MAX_DEPTH = 100

_STATE_RE = re.compile(r"^state\.(\d+)\.yaml$")
_CLAIM_RE = re.compile(r"^claim\.(\d+)$")
_WORKDIR_RE = re.compile(r"^workdir\.(\d+)$")  # attempt directories, DESIGN.md 5.1

def unique_suffix():
    """`<pid>.<8 hex>`: names a transient file no other process can be using.

    os.urandom rather than the secrets module: importing that costs every command ~7 ms.
    """
    return f"{os.getpid()}.{os.urandom(4).hex()}"


class JobPaths:
    """The file names of one job directory (the only place they are spelled)."""

    __slots__ = ("dir",)

    def __init__(self, path):
        self.dir = os.fspath(path)

    def __repr__(self):
        return f"JobPaths({self.dir!r})"

    def _join(self, name):
        return os.path.join(self.dir, name)

    @property
    def config(self):
        return self._join(CONFIG)

    @property
    def state_link(self):
        return self._join(STATE_LINK)

    @property
    def stdout(self):
        return self._join(STDOUT)

    @property
    def stderr(self):
        return self._join(STDERR)

    @property
    def workdir(self):
        return self._join(WORKDIR)

    def state(self, epoch):
        return self._join(state_name(epoch))

    def attempt_workdir(self, epoch):
        """`workdir.<E>`: the working directory an attempt of epoch E created (DESIGN.md 5.1)."""
        return self._join(workdir_name(epoch))

    def claim(self, epoch):
        return self._join(claim_name(epoch))

    def tmp(self, what):
        """A fresh transient file name (dot file: never a job or state, see DESIGN.md 1)."""
        return self._join(f".tmp.{what}.{unique_suffix()}")

    def is_job(self):
        return os.path.isfile(self.config)


def state_name(epoch):
    return f"state.{int(epoch)}.yaml"


def claim_name(epoch):
    return f"claim.{int(epoch)}"


def workdir_name(epoch):
    return f"{WORKDIR}.{int(epoch)}"


def workdir_epoch(name):
    """E of a `workdir.<E>` name, or None for any other name."""
    m = _WORKDIR_RE.match(name) if name.startswith(WORKDIR + ".") else None
    return int(m.group(1)) if m else None


class Listing:
    """What one listing of a job directory says: the newest state and claim epochs."""

    __slots__ = ("state_epochs", "claim_epochs", "names")

    def __init__(self, names):
        self.names = names
        self.state_epochs = []
        self.claim_epochs = []
        for name in names:
            if name.startswith("state."):
                m = _STATE_RE.match(name)
                if m:
                    self.state_epochs.append(int(m.group(1)))
            elif name.startswith("claim."):
                m = _CLAIM_RE.match(name)
                if m:
                    self.claim_epochs.append(int(m.group(1)))

    @property
    def state_epoch(self):
        """Epoch of the latest state file, or None when there is none."""
        return max(self.state_epochs) if self.state_epochs else None

    @property
    def claim_epoch(self):
        """Epoch of the top claim, 0 when the job was never claimed."""
        return max(self.claim_epochs) if self.claim_epochs else 0


def list_job(jobdir):
    """List a job directory (a fresh READDIR: on NFS this revalidates the directory)."""
    try:
        return Listing(os.listdir(jobdir))
    except FileNotFoundError:
        raise JobNotFound(jobdir, "no such directory") from None
    except NotADirectoryError:
        raise JobNotFound(jobdir, "not a directory") from None


# ---------------------------------------------------------------- parsing and validation

def parse_text(text, path):
    """Parse a state or config file: JSON first (what the tool writes), then safe YAML."""
    if len(text) > MAX_FILE_BYTES:
        raise CorruptJob(path, f"larger than {MAX_FILE_BYTES} bytes")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = _parse_yaml(text, path)
    _check_size(data, path)
    return data


def _yaml_nesting(text):
    """An upper bound on how deeply a YAML text nests (flow brackets, or block indentation
    and `- ` prefixes), found without parsing it."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    for line in text.splitlines():
        lead = len(line) - len(line.lstrip(" -"))
        deepest = max(deepest, lead // 2)
    return deepest


def _parse_yaml(text, path):
    import yaml  # imported lazily: only files a person edited are YAML

    # libyaml's composer recurses in C: a deep enough text overflows the C stack (a
    # segfault seen with Python 3.9's PyYAML), so depth is checked before parsing.
    if _yaml_nesting(text) > MAX_DEPTH:
        raise CorruptJob(path, f"nested deeper than {MAX_DEPTH} levels")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptJob(path, f"not valid JSON or YAML ({reason})") from None


def _check_size(data, path):
    """Refuse deeply nested values and alias bombs (shared nodes are counted every time)."""
    budget = MAX_NODES
    stack = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise CorruptJob(path, f"more than {MAX_NODES} values (an alias bomb?)")
        if depth > MAX_DEPTH:
            raise CorruptJob(path, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def open_regular(path):
    """Open a job file for reading: (fd, fstat). Only regular files are job files.

    A FIFO, device or socket planted in a job directory would block or stream forever
    (O_NONBLOCK keeps the open itself from blocking), and an unopenable file (EISDIR,
    ELOOP, EACCES) is damage: both are CorruptJob. ENOENT passes through, as readers list
    the directory again on it (DESIGN.md 3).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorruptJob(path, exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptJob(path, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_file(path):
    """Read a job file as text, capping the size read."""
    fd, _ = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        try:
            raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise CorruptJob(path, exc.strerror or str(exc)) from None
    if len(raw) > MAX_FILE_BYTES:
        raise CorruptJob(path, f"larger than {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptJob(path, "not UTF-8 text") from None


_NUMBER = (int, float)
_BOOKKEEPING_TYPES = {
    "status": (str,),
    "priority": _NUMBER,
    "epoch": (int,),
    "requeue_epoch": (int,),
    "attempts": (int,),
    "experiment": (str,),
    "hash": (str,),
}


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


# Optional bookkeeping the runner reads back: wrong types would crash it after it claimed.
_OPTIONAL_CHECKS = (
    ("runs", _is_int, "a whole number"),
    ("resumes", _is_int, "a whole number"),
    ("pgid", _is_int, "a whole number"),
    ("pythonpath", lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v), "a list of paths"),
)


def check_agrees(state, config, path):
    """The state must belong to its config.yaml: a hand-edited experiment would run other code."""
    for key in ("experiment", "hash"):
        if key in config["dbdict"] and state["dbdict"].get(key) != config["dbdict"][key]:
            raise CorruptJob(path, f"the state's dbdict.{key} differs from config.yaml's")


def validate_state(data, path, epoch=None):
    """Check a parsed state: a mapping with a well-typed `dbdict` block. Returns it."""
    if not isinstance(data, dict):
        raise CorruptJob(path, f"state is a {type(data).__name__}, not a mapping")
    book = data.get("dbdict")
    if not isinstance(book, dict):
        raise CorruptJob(path, "no `dbdict` mapping in the state")
    for key, types in _BOOKKEEPING_TYPES.items():
        if key not in book:
            raise CorruptJob(path, f"dbdict.{key} is missing")
        value = book[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise CorruptJob(path, f"dbdict.{key} has the wrong type ({type(value).__name__})")
    for key, check, what in _OPTIONAL_CHECKS:
        if book.get(key) is not None and not check(book[key]):
            raise CorruptJob(path, f"dbdict.{key} is not {what}")
    if book["status"] not in STATUSES:
        raise CorruptJob(path, f"dbdict.status {book['status']!r} is not one of {', '.join(STATUSES)}")
    if epoch is not None and book["epoch"] != epoch:
        raise CorruptJob(path, f"dbdict.epoch is {book['epoch']}, the file name says {epoch}")
    return data


def read_state_file(path, epoch=None):
    """Read, parse and validate one state file (FileNotFoundError passes through)."""
    return validate_state(parse_text(read_file(path), path), path, epoch)


def read_latest_state(jobdir, retries=20):
    """The job's state: the highest `state.<E>.yaml`. Returns (listing, state).

    A newer holder may delete older state files between our listing and our open:
    on ENOENT we list again (DESIGN.md 3).
    """
    for _ in range(retries):
        listing = list_job(jobdir)
        epoch = listing.state_epoch
        if epoch is None:
            if CONFIG not in listing.names:
                raise JobNotFound(jobdir)
            raise CorruptJob(jobdir, "no state.<E>.yaml file")
        try:
            state = read_state_file(os.path.join(jobdir, state_name(epoch)), epoch)
        except FileNotFoundError:
            continue
        sweep_hidden_tmp(jobdir, listing.names, epoch)
        return listing, state
    raise CorruptJob(jobdir, "state files keep disappearing while being read")


def read_claim(jobdir, epoch):
    """The token a claim file holds (JSON written by booking.py), or {} if unreadable.

    FileNotFoundError passes through: claims are never deleted, so it means no such claim.
    """
    path = os.path.join(jobdir, claim_name(epoch))
    try:
        fd, _ = open_regular(path)
    except CorruptJob:
        return {}
    with os.fdopen(fd, "rb") as f:
        raw = f.read(65536)
    try:
        token = json.loads(raw)
    except ValueError:
        return {}
    return token if isinstance(token, dict) else {}


def read_config(jobdir):
    path = os.path.join(jobdir, CONFIG)
    try:
        text = read_file(path)
    except FileNotFoundError:
        raise JobNotFound(jobdir) from None
    except IsADirectoryError:
        raise CorruptJob(path, "is a directory") from None
    data = parse_text(text, path)
    if not isinstance(data, dict) or not isinstance(data.get("dbdict"), dict):
        raise CorruptJob(path, "config is not a mapping with a `dbdict` block")
    if not isinstance(data["dbdict"].get("experiment"), str):
        raise CorruptJob(path, "config has no dbdict.experiment")
    return data


# ---------------------------------------------------------------- writing

def fsync_dir(path):
    """fsync a directory so a rename in it is durable; some filesystems answer EINVAL."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EROFS, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path):
    """Yield a temporary name beside `path` (a dot file); when the block succeeds it is
    renamed over `path`, so readers see the old file or the new one, never a part of one.
    On any error the temporary file is removed and `path` is left as it was."""
    directory, name = os.path.split(os.fspath(path))
    tmp = os.path.join(directory, f".tmp.{name}.{unique_suffix()}")
    try:
        yield tmp
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write(path, data, *, fsync=True, before_rename=None):
    """Write bytes to `path` by temp file + fsync + rename (+ fsync of the directory)."""
    try:
        with replacing(path) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if before_rename is not None:
                before_rename()
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if fsync:
        fsync_dir(os.path.dirname(path) or ".")


def dump_state(state):
    """State files are indented JSON: valid YAML for people, ~10x faster to parse."""
    return (json.dumps(state, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _test_stop(point, status):
    """Test seam: DBDICT_TEST_STOP_BEFORE_RENAME=<point>:<status>:<marker>[,...] makes this
    process write <marker> (its pid) and SIGSTOP itself, once per marker, when it writes a
    state whose status is <status>, at <point>: `write` (after the fence check, before the
    temporary file), `state` (between the temporary file and its rename) or `link` (after
    choosing the `state.yaml` link's target from its listing, before making the link).
    A writer paused, or killed, exactly there."""
    for spec in os.environ.get("DBDICT_TEST_STOP_BEFORE_RENAME", "").split(","):
        parts = spec.split(":", 2)
        if len(parts) != 3 or parts[:2] != [point, status] or os.path.exists(parts[2]):
            continue
        with open(parts[2] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(parts[2] + ".tmp", parts[2])
        os.kill(os.getpid(), signal.SIGSTOP)


def write_state_file(jobdir, epoch, state):
    """Write `state.<epoch>.yaml` atomically and point `state.yaml` at the newest state.

    The caller must hold claim `epoch` and have checked that it is not fenced.
    """
    paths = JobPaths(jobdir)
    path = paths.state(epoch)
    _check_size(state, path)  # never write what readers would call corrupt
    data = dump_state(state)
    if len(data) > MAX_FILE_BYTES:
        raise CorruptJob(path, f"a state of {len(data)} bytes is larger than {MAX_FILE_BYTES}")
    status = str(state.get("dbdict", {}).get("status"))
    _test_stop("write", status)
    atomic_write(path, data, before_rename=lambda: _test_stop("state", status))
    update_state_link(jobdir, _status=status)


def update_state_link(jobdir, _status=None):
    """Point the `state.yaml` symlink at the newest state file (for people; best effort).

    It is computed from a fresh listing, and checked again after the rename: a late writer
    whose rename landed after a newer writer's (it listed before the newer state existed)
    sees its link name an old or removed state and repoints it. Every writer checks after
    its own last rename, so once writers settle the link names the newest, existing, state.
    A temporary link swept by someone else (anyone may remove `.tmp.state.yaml.*`) is
    simply made again.
    """
    link = JobPaths(jobdir).state_link
    for _ in range(5):
        try:
            epoch = list_job(jobdir).state_epoch
        except (JobNotFound, OSError):
            return
        if epoch is None:
            return
        want = state_name(epoch)
        try:
            if os.readlink(link) == want:
                return
        except OSError:
            pass
        _test_stop("link", _status)
        try:
            with replacing(link) as tmp:
                os.symlink(want, tmp)
        except OSError:
            pass  # e.g. our temporary link was swept: look again


def _tmp_state_epoch(name):
    """k of a `.tmp.state.<k>.yaml.*` name (a state file being written), else None."""
    if not name.startswith(".tmp.state."):
        return None
    head = name[len(".tmp.state."):].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def sweep_hidden_tmp(jobdir, names, epoch):
    """Remove the protocol's temporary files that no live holder can still need, at once
    (no observation needed; DESIGN.md 4 "Transient files", docs/design.md 9.e):

    * `.tmp.state.<k>.yaml.*` with k < `epoch`, the newest state listed: only a holder of
      claim k writes one, and state.<epoch> exists, so its rename could only add a hidden
      state (the writer is fenced, or dead between its write and its rename);
    * `.tmp.state.yaml.*`: a temporary `state.yaml` link, which its maker, if alive, makes
      again (update_state_link) from a fresh listing.

    Costs nothing when there is nothing to remove: the names were listed anyway.
    """
    for name in names:
        if not name.startswith(".tmp.state."):
            continue
        k = _tmp_state_epoch(name)
        if (k is not None and k < epoch) or name.startswith(".tmp.state.yaml."):
            try:
                os.unlink(os.path.join(jobdir, name))
            except OSError:
                pass


def remove_older_states(jobdir, epoch):
    """Delete state files older than `epoch` (allowed once ours exists, DESIGN.md 3), and the
    temporary files of older epochs' writers; then repoint `state.yaml`, so the link never
    names a file removed here (a late writer may have pointed it at its own, older, one)."""
    listing = list_job(jobdir)
    for old in listing.state_epochs:
        if old < epoch:
            try:
                os.unlink(os.path.join(jobdir, state_name(old)))
            except OSError:
                pass
    sweep_hidden_tmp(jobdir, listing.names, epoch)
    update_state_link(jobdir)


# ---------------------------------------------------------------- trees

def iter_jobdirs(tree):
    """Yield every job directory below `tree` (depth first, sorted), never descending into one.

    Dot directories (.dbdict, temporary job builds) are skipped, and symlinked directories
    are not followed, so a symlink loop cannot hang the walk or lead outside the tree.
    """
    tree = os.fspath(tree)
    if os.path.isfile(os.path.join(tree, CONFIG)):
        yield tree
        return
    stack = [tree]
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue
            if os.path.exists(os.path.join(entry.path, CONFIG)):
                yield entry.path
            else:
                subdirs.append(entry.path)
        stack.extend(reversed(subdirs))

"""The fenced workdir (DESIGN.md 5.1): per-attempt directories `workdir.<E>` and a symlink.

`JOBDIR/workdir` is a relative symlink to the committed attempt directory; the latest state
names it too (`dbdict.workdir`), and that name, not the symlink, is what the next attempt
starts from. An attempt whose predecessor may still be alive (a steal by lease expiry)
works in a fresh `workdir.<E>` built as a byte copy of the committed directory (rev 4: a
reflink where the filesystem offers one, else copy_file_range): it shares no inode with the
old attempt, so neither a fenced attempt's late tmp + rename (its cwd follows the inode) nor
its in-place rewrite (`torch.save` opens the existing name with O_TRUNC), nor a late
`--scratch` sync-back, can change it. A clean start (every earlier holder proven gone:
the last run attempt committed its end after its shepherd saw every process end, see
clean_start) reuses the committed directory in place: O(1), and the experiment's cwd stays
the same path across resumes.

Old directories: when an attempt commits `running` in a new directory, every other
`workdir.<n>` with n < E except the one it started from is removed; the one it started
from goes at the next new directory. Removing a directory a stale attempt may still use
cannot change the committed one (other inodes), so this only bounds disk use.
"""

import errno
import fcntl
import os
import stat

from . import jobdir as jd
from .errors import DbdictError

_UNKNOWN = object()

# An attempt heartbeats (keep_alive) every this many files while it builds its copy.
_BEAT_EVERY = 200


def committed_name(jobdir, state, names=None):
    """The name (`workdir.<n>`) of the committed attempt directory, or None if there is none.

    The latest state's `dbdict.workdir` first; then the symlink's target; then the newest
    `workdir.<n>` (a holder that died between building its directory and committing).
    `names`: a listing of the job directory the caller already has."""
    names = _names(jobdir) if names is None else set(names)
    book = state.get("dbdict", {}) if isinstance(state, dict) else {}
    name = book.get("workdir")
    if isinstance(name, str) and jd.workdir_epoch(name) is not None and name in names:
        return name
    try:
        target = os.readlink(jd.JobPaths(jobdir).workdir)
        if jd.workdir_epoch(target) is not None and target in names:
            return target
    except OSError:
        pass
    epochs = [jd.workdir_epoch(n) for n in names]
    epochs = [e for e in epochs if e is not None]
    return jd.workdir_name(max(epochs)) if epochs else None


def _names(jobdir):
    try:
        return set(os.listdir(jobdir))
    except OSError:
        return set()


def convert_old_layout(jobdir, epoch):
    """A `workdir` that is a real directory (older trees, hand-made jobs) becomes
    `workdir.<epoch>` with `workdir` a symlink to it. Same contents, so any holder may do it
    at any time. True when it converted (so what the directory holds changed)."""
    paths = jd.JobPaths(jobdir)
    try:
        st = os.lstat(paths.workdir)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    name = jd.workdir_name(epoch)
    try:
        os.rename(paths.workdir, os.path.join(jobdir, name))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return True  # someone else converted it first
        raise
    point_link(jobdir, name)
    return True


def point_link(jobdir, name):
    """Repoint the `workdir` symlink at `name` (temporary symlink + rename, like state.yaml)."""
    with jd.replacing(jd.JobPaths(jobdir).workdir) as tmp:
        os.symlink(name, tmp)


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int), a reflink of the whole file
_CHUNK = 64 << 20  # bytes copied between two keep_alive() calls


def copy_file(src, dst, keep_alive=None):
    """Give `dst` (a new name) the bytes of `src` in an inode of its own, never a hard link.

    A reflink (FICLONE) where the filesystem offers one (btrfs, XFS, OCFS2: O(1), blocks
    shared copy-on-write, so a later in-place write to either file changes only that one);
    otherwise os.copy_file_range (in-kernel; NFS 4.2 does it on the server), then plain
    reads and writes, in chunks with `keep_alive()` between them. Mode and times follow, as
    with shutil.copy2. False when keep_alive() said stop (dst is then incomplete)."""
    with open(src, "rb", opener=_nofollow) as fin, open(dst, "xb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
        except OSError:
            if not _copy_range(fin.fileno(), fout.fileno(), keep_alive):
                return False
    import shutil

    shutil.copystat(src, dst, follow_symlinks=False)
    return True


def _rmtree(path):
    """shutil.rmtree, ignoring errors; shutil (with its bz2 and lzma) is imported only when a
    directory goes, not at every `run`'s start."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _nofollow(path, flags):
    return os.open(path, flags | os.O_NOFOLLOW)


def _copy_range(fin, fout, keep_alive):
    ranged = hasattr(os, "copy_file_range")
    while True:
        if ranged:
            try:
                done = os.copy_file_range(fin, fout, _CHUNK)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                    raise
                ranged = False  # not between these two files: copy through user space
                continue
        else:
            data = os.read(fin, 1 << 20)
            done = len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fout, view):]
        if not done:
            return True
        if keep_alive is not None and not keep_alive():
            return False


def copy_tree(src, dst, keep_alive=None):
    """Build `dst` as a byte copy of `src` (DESIGN.md 5.1 rev 4): mkdir per directory,
    copy_file per file (no inode shared with `src`), symlinks copied as links.
    `keep_alive()` False stops it (returns False)."""
    count = 0
    os.mkdir(dst)
    for top, dirs, files in os.walk(src):
        rel = os.path.relpath(top, src)
        out = dst if rel == "." else os.path.join(dst, rel)
        for d in list(dirs):
            s = os.path.join(top, d)
            if os.path.islink(s):
                dirs.remove(d)
                os.symlink(os.readlink(s), os.path.join(out, d))
            else:
                os.mkdir(os.path.join(out, d))
        for f in files:
            s, t = os.path.join(top, f), os.path.join(out, f)
            try:
                st = os.lstat(s)
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(s), t)
                elif stat.S_ISREG(st.st_mode) and not copy_file(s, t, keep_alive):
                    return False
            except FileNotFoundError:
                continue  # a stale writer's temporary file, renamed meanwhile
            count += 1
            if keep_alive is not None and count % _BEAT_EVERY == 0 and not keep_alive():
                return False
    return True


def prepare(held, clean, keep_alive=None, source=_UNKNOWN):
    """The attempt directory of claim `held` (a path), built as DESIGN.md 5.1 says.

    `clean`: no earlier attempt can still write into the committed directory, so it is
    reused in place; otherwise a byte copy `workdir.<E>` is built (copy_tree). `source`: the
    committed name, when the caller has it. Returns (path, name, new) where `new` says a
    fresh directory was built."""
    jobdir = held.jobdir
    # A known `workdir.<n>` means the layout is already the per-attempt one (as `create`
    # makes it): no lstat of `workdir` is needed.
    if source is _UNKNOWN or source is None:
        if convert_old_layout(jobdir, int(held.state["dbdict"].get("epoch", 0))) or source is _UNKNOWN:
            source = committed_name(jobdir, held.state)
    if source is None:  # no workdir at all (first run of a hand-made job): start empty
        name = jd.workdir_name(held.epoch)
        path = os.path.join(jobdir, name)
        os.makedirs(path, exist_ok=True)
        return path, name, True
    if clean:
        return os.path.join(jobdir, source), source, False
    name = jd.workdir_name(held.epoch)
    path = os.path.join(jobdir, name)
    if os.path.lexists(path):  # only claim E builds workdir.<E>: a leftover of no one
        _rmtree(path)
    if not copy_tree(os.path.join(jobdir, source), path, keep_alive):
        _rmtree(path)
        from .errors import Fenced

        raise Fenced(f"{jobdir}: this worker no longer holds the job: workdir copy stopped")
    return path, name, True


def kept_name(name):
    """The name a directory set aside by `requeue --fresh` keeps: no cleanup removes it."""
    return f"{name}.kept"


def prepare_fresh(held, source):
    """`requeue --fresh` (DESIGN.md 7, rev 4): an empty `workdir.<E>` for claim `held`, the
    committed directory `source` set aside beside it as kept_name(source) (never deleted;
    a rename, so a fenced holder still in it writes only there). Returns (path, name, True)."""
    jobdir = held.jobdir
    name = jd.workdir_name(held.epoch)
    path = os.path.join(jobdir, name)
    if os.path.lexists(path):  # only claim E builds workdir.<E>: a leftover of no one
        _rmtree(path)
    os.mkdir(path)
    if source is not None and source != name:
        kept = kept_name(source)
        if os.path.lexists(os.path.join(jobdir, kept)):
            kept = f"{kept}.{held.epoch}"
        try:
            os.rename(os.path.join(jobdir, source), os.path.join(jobdir, kept))
        except FileNotFoundError:
            pass
    return path, name, True


def commit(jobdir, name, source=None):
    """After the `running` state naming `name` was written: point `workdir` at the directory
    the latest state names (a stale holder's late call thus converges on the newest), then
    remove old attempt directories other than `name` and `source`."""
    for _ in range(5):
        try:
            _, state = jd.read_latest_state(jobdir)
        except (DbdictError, OSError):  # the link is for people; the state decides
            return
        want = committed_name(jobdir, state)
        if want is None:
            return
        try:
            point_link(jobdir, want)
        except OSError:
            return
        try:
            if os.readlink(jd.JobPaths(jobdir).workdir) == committed_name(jobdir, jd.read_latest_state(jobdir)[1]):
                break
        except (DbdictError, OSError):
            break
    mine = jd.workdir_epoch(name)
    if want != name:
        return  # a newer attempt committed: it removes what is old
    for other in _names(jobdir):
        e = jd.workdir_epoch(other)
        if e is not None and e < mine and other not in (name, source):
            _rmtree(os.path.join(jobdir, other))


def clean_start(held):
    """Whether every earlier holder of the committed directory is proven gone, so claim
    `held` may reuse it in place (DESIGN.md 5.1 rev 4). The proof is `dbdict.ended`: the
    epoch of the last run attempt that committed its end after its shepherd had exited on
    its own, which it does only once every process of the attempt is gone. It must name the
    latest run claim before ours: a command's claim since (a requeue or cancel, from any
    host) proves nothing about the holder it fenced, which may be paused or behind a hung
    mount, and whose exited command process tells nothing. A holder that died (its shepherd
    killed too, or never seen to finish: a setsid daemon may outlive it) or was stolen from
    is not proven gone: the next attempt works in a byte copy."""
    book = held.state["dbdict"]
    prev = int(book.get("epoch", 0))
    if prev != held.epoch - 1:
        return False  # a claim between the state and ours wrote nothing: its holder is unknown
    last_run = latest_run_claim(held.jobdir, prev)
    if last_run is None:
        return False  # a token we cannot read: assume the worst
    return last_run == 0 or book.get("ended") == last_run


def latest_run_claim(jobdir, epoch):
    """The newest run claim at or below `epoch` (commands' claims skipped), 0 when no run
    ever claimed the job, None when a token cannot be read."""
    for k in range(epoch, 0, -1):
        try:
            token = jd.read_claim(jobdir, k)
        except OSError:  # missing (read_claim answers {} for an unreadable one)
            return None
        if not isinstance(token, dict):
            return None
        if token.get("purpose", "run") == "run":
            return k
    return 0

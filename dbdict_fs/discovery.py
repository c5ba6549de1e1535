"""How a worker finds its next job without scanning the tree per booking (DESIGN.md 4.1).

A worker walks the tree one directory at a time, in random order, and tries each job it
meets: one listing and one state read decide, and a runnable job is booked at once. What a
walk would waste on finished jobs is saved by *final marks*: `.final.<name>`, an empty dot
file beside the job directory `<name>` (in its parent, the fan-out directory), created once
when the job's state becomes final (done, failed, canceled). One listing of a fan-out
directory then tells which of its jobs are still worth a look, and a directory whose every
entry is marked is marked in its parent the same way, so a walk of a finished tree costs
the tree's own listing.

Marks are hints, never the truth: booking still decides on fresh reads. They are kept
right by two rules (see `mark_final`, `mark_final_dir` and `unmark_final`):
- whoever marks re-lists afterwards, and takes the mark back if a claim newer than the
  final state it saw exists (for a directory: an entry without a mark);
- whatever makes a job runnable (a requeue: after linking its claim, before writing its
  state; create: after the rename) removes its mark and those of the directories above it.
So a mark never hides a runnable job, whatever the interleaving, and a final job without a
mark (a crash between commit and mark) is marked by the next worker that reads it.

A walk is in random order; jobs made ready above the default priority (restart priority
after INCOMPLETE, `create --priority`, `requeue --priority`) leave a *hint*, an empty file
`TREE/.dbdict/hints/<P>~<path>`, and a walk tries hinted jobs first, highest first.

A `--wait` worker remembers the jobs it saw held by others and re-judges only a bounded
sample of them per pass (their claims' mtimes, DESIGN 4's lease by observation), plus one
directory, so its cost per pass does not grow with the tree.
"""

import os
import random

from . import booking
from . import jobdir as jd
from .errors import CorruptJob, JobNotFound

MARK = ".final."
HINTS = os.path.join(".dbdict", "hints")  # in the tree: ready jobs above the default priority
DEFAULT_PRIORITY = 1.0
FINAL = booking.FINAL
WATCH_SAMPLE = 16  # held jobs re-judged per waiting pass


def mark_path(jobdir):
    parent, name = os.path.split(os.path.normpath(jobdir))
    return os.path.join(parent, MARK + name)


def mark_final(jobdir, epoch):
    """Mark a job whose state at `epoch` is final (best effort: a mark is only a hint).

    Re-lists the job after creating the mark: a claim newer than `epoch` means someone may
    have made it runnable since, and the mark is taken back (see the module docstring).
    """
    path = mark_path(jobdir)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
    except OSError:
        return False
    try:
        newer = jd.list_job(jobdir).claim_epoch > epoch
    except JobNotFound:
        newer = True
    if newer:
        unmark_final(jobdir)
        return False
    return True


def mark_final_dir(path):
    """Mark a directory every entry of which is marked final (a fan-out directory of finished
    jobs), so a walk skips it from its parent's listing. Re-lists it afterwards and takes the
    mark back if an entry lost its mark meanwhile (same rule as mark_final)."""
    mark = mark_path(path)
    try:
        os.close(os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
    except OSError:
        return False
    names = _list(path) or []
    marked = {n[len(MARK):] for n in names if n.startswith(MARK)}
    if any(n[0] != "." and n not in marked for n in names):
        _unlink(mark)
        return False
    return True


def unmark_final(jobdir, levels=8):
    """Remove a job's final mark and those of the directories above it that a walk marked
    all-final: call after linking a claim, before writing a runnable state (and after
    creating a job). Stops at the first level without a mark: marks only exist above marks."""
    _unlink(mark_path(jobdir))
    path = os.path.dirname(os.path.normpath(jobdir))
    for _ in range(levels):
        if not _unlink(mark_path(path)):
            break
        path = os.path.dirname(path)


def _unlink(path):
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- priority hints

def tree_of(jobdir, levels=8):
    """The tree a job belongs to: the nearest directory above it that holds `.dbdict/`."""
    path = os.path.dirname(os.path.normpath(os.fspath(jobdir)))
    for _ in range(levels):
        if os.path.isdir(os.path.join(path, ".dbdict")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return None


def _hint_name(priority, rel):
    return f"{float(priority)!r}~" + rel.replace("%", "%25").replace(os.sep, "%2F")


def _parse_hint(name):
    """(priority, relative job path) of a hint's name, or None if it is not one of ours."""
    prio, sep, rel = name.partition("~")
    if not sep or name.startswith("."):
        return None
    try:
        priority = float(prio)
    except ValueError:
        return None
    rel = rel.replace("%2F", os.sep).replace("%25", "%")
    parts = rel.split(os.sep)
    if not rel or os.path.isabs(rel) or any(p in ("", ".", "..") for p in parts) or priority != priority:
        return None
    return priority, rel


def hint(jobdir, priority, tree=None):
    """Say that a job is ready at a priority above the default: a walk tries hinted jobs
    first, highest priority first (an empty file `TREE/.dbdict/hints/<P>~<path>`, created by
    whoever makes the job ready: create, a run's requeue at restart priority, a requeue).
    Best effort: a job without a hint is still found by the walk, only not first."""
    if not isinstance(priority, (int, float)) or isinstance(priority, bool) or not priority > DEFAULT_PRIORITY:
        return
    tree = tree or tree_of(jobdir)
    if tree is None:
        return
    rel = os.path.relpath(os.path.normpath(os.fspath(jobdir)), tree)
    if rel.startswith(".."):
        return
    folder = os.path.join(tree, HINTS)
    try:
        os.makedirs(folder, exist_ok=True)
        os.close(os.open(os.path.join(folder, _hint_name(priority, rel)), os.O_WRONLY | os.O_CREAT, 0o644))
    except OSError:
        pass


class Discovery:
    """One worker's view of a tree: walks it lazily and remembers what it saw held.

    `walk()` yields candidate job directories of one full walk, each with the listing and
    state already read (so booking does not read them again); `watched()` gives the sample
    of held jobs a waiting pass should re-judge.
    """

    def __init__(self, tree, rng=None):
        self.tree = os.fspath(tree)
        self.rng = rng or random.Random()
        self.held = {}     # jobdir -> epoch of the claim it was seen held under
        self.damaged = {}  # jobdir -> reason (said once, never retried)
        self.marked = 0    # final jobs this worker marked (counted, for tests)
        self.pending = []  # directories not listed yet in a waiting worker's slow walk
        self.hinted = {}   # jobdir -> its priority hint's path (removed once we book the job)

    # -- one full walk -------------------------------------------------------------
    def walk(self):
        """Yield (jobdir, listing, state) for every unmarked, readable job: a depth-first
        walk in random order, so the first job is found after a few listings at any N.
        Jobs with a priority hint come first, highest priority first."""
        yield from self._hinted()
        yield from self._visit(self.tree, None, None)

    def _hinted(self):
        folder = os.path.join(self.tree, HINTS)
        names = _list(folder)
        if not names:
            return
        hints = []
        for name in names:
            parsed = _parse_hint(name)
            if parsed is None:
                continue
            hints.append((-parsed[0], self.rng.random(), parsed[1], os.path.join(folder, name)))
        for _, _, rel, path_of_hint in sorted(hints):
            path = os.path.join(self.tree, rel)
            sub = _list(path)
            found, _ = self._read(path, sub) if sub is not None and jd.CONFIG in sub else (None, False)
            if found is None or isinstance(found[2], Exception) or not _plain_ready(found[1], found[2]):
                _unlink(path_of_hint)  # not ready now: whoever makes it ready again hints again
                continue
            self.hinted[path] = path_of_hint
            yield found

    def _visit(self, top, names, frontier):
        """Try the jobs of one directory. Deeper directories are walked at once, or put on
        `frontier` (with their listing) when one directory is all a pass may list. Returns
        (to `yield from`) whether every entry of `top` is now marked final."""
        if names is None:
            names = _list(top)
        if names is None:
            return False
        if jd.CONFIG in names:  # the tree (or a directory given as one) is itself a job
            found, _ = self._read(top, names)
            if found:
                yield found
            return False
        marked = {n[len(MARK):] for n in names if n.startswith(MARK)}
        entries = [n for n in names if n[0] != "." and n not in marked]
        self.rng.shuffle(entries)
        settled = 0  # entries found final (and marked) by this visit
        for name in entries:
            path = os.path.join(top, name)
            if path in self.damaged:
                continue
            sub = _list(path)
            if sub is None:
                continue
            if jd.CONFIG not in sub:  # a deeper level of the tree (a fan-out directory)
                if frontier is None:
                    if (yield from self._visit(path, sub, None)) and mark_final_dir(path):
                        settled += 1
                else:
                    frontier.append((path, sub))
                continue
            found, final = self._read(path, sub)
            if found:
                yield found
            settled += final
        return settled == len(entries) and top != self.tree  # the tree is never marked (outside it)

    def _read(self, path, names):
        """The job's latest state from a listing we already have; marks a final job.
        Returns (candidate or None, whether the job is final and marked)."""
        listing = jd.Listing(names)
        try:
            epoch = listing.state_epoch
            if epoch is None:
                raise CorruptJob(path, "no state.<E>.yaml file")
            try:
                state = jd.read_state_file(os.path.join(path, jd.state_name(epoch)), epoch)
            except FileNotFoundError:  # a newer holder removed it: read again (DESIGN.md 3)
                listing, state = jd.read_latest_state(path)
        except JobNotFound:
            return None, False
        except CorruptJob as exc:
            self.damaged[path] = str(exc)
            return (path, listing, exc), False
        status = state["dbdict"]["status"]
        if status in FINAL and listing.claim_epoch <= state["dbdict"]["epoch"]:
            self.held.pop(path, None)
            ok = mark_final(path, state["dbdict"]["epoch"])
            self.marked += ok
            return None, ok
        return (path, listing, state), False

    # -- a waiting worker ------------------------------------------------------------
    def saw_held(self, jobdir, epoch):
        self.held[jobdir] = epoch

    def taken(self, jobdir):
        """We booked the job: stop watching it, and drop its priority hint."""
        self.held.pop(jobdir, None)
        hint_path = self.hinted.pop(jobdir, None)
        if hint_path:
            _unlink(hint_path)

    def watched(self):
        """A bounded random sample of the held jobs, each re-read: (jobdir, listing, state)."""
        sample = list(self.held)
        if len(sample) > WATCH_SAMPLE:
            sample = self.rng.sample(sample, WATCH_SAMPLE)
        for path in sample:
            names = _list(path)
            if names is None or jd.CONFIG not in names:
                self.held.pop(path, None)
                continue
            found, _ = self._read(path, names)
            if found:
                yield found

    def slow_walk(self):
        """One directory of a walk spread over waiting passes: finds jobs made runnable by a
        command after this worker's last full walk, at a cost per pass independent of N."""
        if not self.pending:
            self.pending = [(self.tree, None)]
        top, names = self.pending.pop(self.rng.randrange(len(self.pending)))
        yield from self._visit(top, None if top == self.tree else names, self.pending)


def _plain_ready(listing, state):
    book = state["dbdict"]
    return book["status"] == "ready" and listing.claim_epoch <= book["epoch"]


def _list(path):
    """Names in a directory, never through a symlink; None if it is not one (or is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        return os.listdir(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


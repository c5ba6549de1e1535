"""How a worker finds its next job without scanning the tree per booking (DESIGN.md 4.1).

A worker walks the tree one directory at a time, in random order, and tries each job it
meets: one listing and one state read decide, and a runnable job is booked at once. What a
walk would waste on finished jobs is saved by *final marks*: `.final.<name>`, an empty dot
file beside the job directory `<name>` (in its parent, the fan-out directory), created once
when the job's state becomes final (done, failed, canceled). One listing of a fan-out
directory then tells which of its jobs are still worth a look, and a directory whose every
entry is marked is marked in its parent the same way, so a walk of a finished tree costs
the tree's own listing.

Marks are hints, never the truth: booking still decides on fresh reads. What makes a job
runnable again never removes a mark (a remover racing a marker that dies before it can
undo its mark would lose); it adds a *live marker* `.live.<name>.<token>` beside the mark,
and a walk skips `<name>` only when it has a final mark and no live marker:
- a requeue, before linking its claim E, creates `.live.<job>.E` and then one (unique token)
  for each directory above the job up to the command's tree (`trees.tree_of`: the tree the
  command named, however deep the job), deepest first; `create`, before it puts the first
  job of the call in a directory, creates `.live..create.<token>` in it (a directory holding
  one is never all final) and then the markers of the directories above, so a create ended
  by a signal leaves no job of its own hidden (it removes `.live..create.*` as it ends);
- whoever finds a job final at epoch F (its committer, or a walk) marks it and removes only
  the job's live markers with E <= F: a newer requeue's marker is never touched; a walk
  marks only from a listing made after the state read (a fenced holder's late `done` may
  land after a steal that an older listing did not show);
- a walk that finds every entry of a directory final marks the directory and removes the
  directory's live markers that it saw *before* listing the directory: a marker made after
  that was made after the one below it, which the listing then showed.
So no interleaving, pause or crash leaves a runnable job skipped; a crash only leaves a
marker that costs walks a look. A final job without a mark (a crash between commit and
mark) is marked by the next walk that reads it. Directories are marked only by a walk whose
root is a tree made by `create` (holding `.dbdict/`), and never a directory that is itself
such a tree: a command that names it makes markers only up to it.

A walk is in random order; jobs made ready above the default priority (restart priority
after INCOMPLETE, `create --priority`, `requeue --priority`) leave a *hint*, an empty file
`TREE/.dbdict/hints/<P>~<path>`, and a walk tries hinted jobs first, highest first.

A `--wait` worker remembers the jobs it saw held by others and re-judges only a bounded
sample of them per pass (their claims' mtimes, DESIGN 4's lease by observation), plus one
directory, so its cost per pass does not grow with the tree.
"""

import os

from . import booking
from . import jobdir as jd
from . import trees
from .errors import CorruptJob, JobNotFound

MARK = ".final."
LIVE = ".live."
CREATING = ".create"  # `.live..create.<token>`: a create is putting jobs in this directory
HINTS = os.path.join(jd.META_DIR, "hints")  # in the tree: ready jobs above the default priority
DEFAULT_PRIORITY = 1.0
FINAL = booking.FINAL
WATCH_SAMPLE = 16  # held jobs re-judged per waiting pass


def mark_path(jobdir):
    parent, name = os.path.split(os.path.normpath(jobdir))
    return os.path.join(parent, MARK + name)


def live_path(path, token):
    parent, name = os.path.split(os.path.normpath(path))
    return os.path.join(parent, f"{LIVE}{name}.{token}")


def _touch(path):
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
        return True
    except OSError:
        return False


def after_commit(jobdir, epoch, state):
    """What follows every commit of `state` under claim `epoch` (a run's end, a command's
    change): the older state files go (DESIGN.md 3), then a final job is marked for walks to
    skip, or a ready one above the default priority is hinted so walks try it first (9.e)."""
    jd.remove_older_states(jobdir, epoch)
    book = state["dbdict"]
    if book.get("status") in booking.FINAL:
        mark_final(jobdir, epoch, book.get("requeue_epoch"))
    elif book.get("status") == "ready":
        hint(jobdir, book.get("priority"), epoch)


def mark_final(jobdir, epoch, requeue_epoch=None):
    """Mark a job whose state at `epoch` is final, after committing it (a mark is a hint).

    Also removes the live marker of the requeue this run came from (`requeue_epoch`, if
    any): that requeue is older than `epoch`. A live marker of a newer requeue has a
    larger token and is never touched here, so no interleaving (or crash) can leave a
    runnable job skipped (see the module docstring)."""
    ok = _touch(mark_path(jobdir))
    if isinstance(requeue_epoch, int) and not isinstance(requeue_epoch, bool) and 0 < requeue_epoch <= epoch:
        _unlink(live_path(jobdir, requeue_epoch))
    return ok


def mark_live(jobdir, epoch, tree=None):
    """Before linking claim.<epoch> of a command that makes a job runnable (a requeue):
    live markers for the job (token `epoch`) and for every directory above it up to the
    tree (a unique token), deepest first, so a walk that sees a directory's live marker has
    already seen the one below. A crash after any of them only costs walks a look."""
    tree = tree or trees.tree_of(jobdir)
    _touch(live_path(jobdir, int(epoch)))
    mark_dirs_live(os.path.dirname(os.path.normpath(jobdir)), tree)


def mark_dirs_live(path, tree):
    """Live markers for `path` and every directory above it, up to (not above) `tree`."""
    if tree is None:
        return
    tree = os.path.normpath(tree)
    token = "d" + jd.unique_suffix().replace(".", "")
    path = os.path.normpath(path)
    while path != tree and trees.inside(path, tree):
        _touch(live_path(path, token))
        path = os.path.dirname(path)


def forget_final(jobdir):
    """A job created where one of its name was deleted: the old final mark is not its own."""
    _unlink(mark_path(jobdir))


def creating_in(directory, tree, token):
    """Before `create` puts its first job in `directory` (which exists): a marker in it that
    keeps any walk from finding it all final, then live markers for it and every directory
    above up to the tree, deepest first, so a walk that had marked them final looks again.
    Returns the first marker's path, which create removes as the call ends (a create killed
    before that leaves it: a look per walk at that one directory)."""
    mine = os.path.join(directory, f"{LIVE}{CREATING}.{token}")
    _touch(mine)
    mark_dirs_live(directory, tree)
    return mine


def _unlink(path):
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- priority hints

def _hint_name(priority, rel, epoch):
    return f"{float(priority)!r}~" + rel.replace("%", "%25").replace(os.sep, "%2F") + f"~{int(epoch)}"


def _parse_hint(name):
    """(priority, relative job path, epoch) of a hint's name, or None if it is not one of ours."""
    prio, sep, rest = name.partition("~")
    rel, sep2, epoch = rest.rpartition("~")
    if not sep or not sep2 or name.startswith(".") or not epoch.isdigit():
        return None
    try:
        priority = float(prio)
    except ValueError:
        return None
    rel = rel.replace("%2F", os.sep).replace("%25", "%")
    parts = rel.split(os.sep)
    if not rel or os.path.isabs(rel) or any(p in ("", ".", "..") for p in parts) or priority != priority:
        return None
    return priority, rel, int(epoch)


def hint(jobdir, priority, epoch, tree=None):
    """Say that state `epoch` of a job is ready at a priority above the default: a walk
    tries hinted jobs first, highest priority first (an empty file
    `TREE/.dbdict/hints/<P>~<path>~<epoch>`, created by whoever wrote that state: create, a
    run's requeue at restart priority, a requeue). The epoch makes each hint's name its own,
    so dropping a stale hint never drops a newer one. Best effort: a job without a hint is
    still found by the walk, only not first."""
    if not isinstance(priority, (int, float)) or isinstance(priority, bool) or not priority > DEFAULT_PRIORITY:
        return
    tree = tree or trees.tree_of(jobdir)
    if tree is None:
        return
    rel = os.path.relpath(os.path.normpath(os.fspath(jobdir)), tree)
    if rel.startswith(".."):
        return
    folder = os.path.join(tree, HINTS)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return
    _touch(os.path.join(folder, _hint_name(priority, rel, epoch)))


class Discovery:
    """One worker's view of a tree: walks it lazily and remembers what it saw held.

    `walk()` yields candidate job directories of one full walk, each with the listing and
    state already read (so booking does not read them again); `watched()` gives the sample
    of held jobs a waiting pass should re-judge.
    """

    def __init__(self, tree, rng=None):
        self.tree = trees.resolve(tree)
        if rng is None:
            import random  # not at import: `run` and the query commands never walk

            rng = random.Random()
        self.rng = rng
        self.held = set()  # jobdirs seen held by another process (watched while --wait polls)
        self.damaged = {}  # jobdir -> reason (said once, never retried)
        self.marked = 0    # final jobs this worker marked (counted, for tests)
        self.pending = []  # directories not listed yet in a waiting worker's slow walk
        self.hinted = {}   # jobdir -> its priority hint's path (removed once we book the job)
        # Directories are marked final only below a tree made by `create` (it holds .dbdict/),
        # named by this command: a requeue naming it makes markers up to it (mark_live).
        self.mark_dirs = os.path.isdir(os.path.join(self.tree, jd.META_DIR))

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
            if parsed is not None:
                hints.append((-parsed[0], self.rng.random(), parsed[1], parsed[2], os.path.join(folder, name)))
        real_tree = None
        for _, _, rel, epoch, path_of_hint in sorted(hints):
            path = os.path.join(self.tree, rel)
            real_tree = real_tree or os.path.realpath(self.tree)
            if not os.path.realpath(path).startswith(real_tree + os.sep):
                continue  # through a symlink, outside the tree: never followed (nor removed)
            sub = _list(path)
            found, _ = self._read(path, sub) if sub is not None and jd.CONFIG in sub else (None, False)
            if found is None or isinstance(found[2], Exception) or found[1].claim_epoch > epoch \
                    or found[2]["dbdict"]["epoch"] > epoch:
                _unlink(path_of_hint)  # that state is over: its hint with it
                continue
            if found[2]["dbdict"]["epoch"] != epoch or not booking.plain_ready(found[1], found[2]):
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
        marked, lives = _marks(names)
        skip = marked - lives.keys()  # final, and nothing made it runnable since
        real = [n for n in names if n[0] != "."]
        entries = [n for n in real if n not in skip]
        self.rng.shuffle(entries)
        settled = len(real) - len(entries)  # entries known final (marked by this visit too)
        for name in entries:
            path = os.path.join(top, name)
            if path in self.damaged:
                continue
            sub = _list(path)
            if sub is None:
                continue
            if jd.CONFIG not in sub:  # a deeper level of the tree (a fan-out directory)
                if frontier is None:
                    # A tree inside ours is never marked: a command naming it stops there.
                    if ((yield from self._visit(path, sub, None)) and self.mark_dirs
                            and jd.META_DIR not in sub):
                        # Every entry below is final: mark the directory, then drop the live
                        # markers we saw before listing it (a newer one was made after the
                        # marker below it, which our listing would have shown).
                        _touch(os.path.join(top, MARK + name))
                        for marker in lives.get(name, ()):
                            _unlink(os.path.join(top, marker[1]))
                        settled += 1
                else:
                    frontier.append((path, sub))
                continue
            found, final = self._read(path, sub, lives.get(name, ()))
            if found:
                yield found
            settled += final
        # The tree is never marked (outside it), nor a directory a create is filling.
        return settled == len(real) and top != self.tree and CREATING not in lives

    def _read(self, path, names, lives=()):
        """The job's latest state from a listing we already have; marks a final job.
        Returns (candidate or None, whether the job is final and nothing marks it live)."""
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
        except CorruptJob as exc:  # the caller says so once and adds it to `damaged`
            self.held.discard(path)
            return (path, listing, exc), False
        book = state["dbdict"]
        if book["status"] in FINAL and listing.claim_epoch <= book["epoch"]:
            # Mark only from a listing made after the read: a fenced holder's late `done`
            # can land after a steal that the listing we read from did not show yet.
            names = _list(path)
            after = jd.Listing(names) if names is not None else None
            if after is None or after.claim_epoch > book["epoch"] or after.state_epoch != book["epoch"]:
                try:  # changed since: a candidate as it is now, marked (if ever) by a later walk
                    listing, state = jd.read_latest_state(path)
                except (JobNotFound, CorruptJob):
                    return None, False
                return (path, listing, state), False
            self.held.discard(path)
            self.marked += _touch(mark_path(path))
            live = False
            for token, marker in lives:
                # A live marker names the claim epoch of the requeue that made it: one not
                # newer than this final state is over. A newer one stays, whoever wins.
                if token.isdigit() and int(token) <= book["epoch"]:
                    _unlink(os.path.join(os.path.dirname(path), marker))
                else:
                    live = True
            return None, not live
        return (path, listing, state), False

    # -- a waiting worker ------------------------------------------------------------
    def saw_held(self, jobdir):
        self.held.add(jobdir)

    def taken(self, jobdir):
        """We booked the job: stop watching it, and drop its priority hint."""
        self.held.discard(jobdir)
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
                self.held.discard(path)
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


def _marks(names):
    """A directory listing's final marks {name} and live markers {name: [(token, file)]}."""
    marked, lives = set(), {}
    for n in names:
        if n.startswith(MARK):
            marked.add(n[len(MARK):])
        elif n.startswith(LIVE):
            name, dot, token = n[len(LIVE):].rpartition(".")
            if dot and name:
                lives.setdefault(name, []).append((token, n))
    return marked, lives


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


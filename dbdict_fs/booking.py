"""The epoch-claim lock-file protocol (DESIGN.md 4): who may run or change a job.

Everything that decides who holds a job lives in this file:

* a claim is `claim.<E>`, made by link()ing a private token file: link never replaces, so
  exactly one process wins epoch E (compare-and-swap on the state it read);
* the holder of E writes only `state.<E>.yaml`; a newer epoch's state hides an older one,
  so a fenced-out holder's late write can never regress the job;
* the holder heartbeats by setting the claim's mtime; an observer judges the claim stale
  after seeing (mtime, ctime) unchanged for the lease on its own CLOCK_BOOTTIME: no clocks
  are compared across hosts;
* the holder fences itself (writes nothing more) once its last good heartbeat is older
  than L/2 on its own CLOCK_BOOTTIME, or once a newer claim exists.

Host identity and the wall clock go through `Identity` and `wallclock()`: the one seam
tests use to simulate other hosts (env DBDICT_HOST, DBDICT_BOOT_ID, DBDICT_CLOCK_OFFSET).
"""

import errno
import json
import os
import time

from . import jobdir as jd
from .procs import alive as _alive
from .procs import boottime
from .procs import group_alive as _group_alive
from .procs import start_ticks as process_start_ticks
from . import seams
from .errors import Fenced, JobNotFound, NotRunnable, UsageError, WriteError
from .options import DEFAULT_HEARTBEAT, DEFAULT_LEASE

COMMAND_LEASE = 30.0  # a command killed after its link blocks the job for no longer (DESIGN 4)
RUNNABLE_AFTER_STALE = ("ready", "running")
FINAL = ("done", "failed", "canceled", "pruned")  # pruned: a search stopped it early (DESIGN 11)


# ---------------------------------------------------------------- identity and clocks

def wallclock():
    """This host's wall clock (only ever recorded for people, never compared across hosts)."""
    return time.time() + float(os.environ.get("DBDICT_CLOCK_OFFSET", "0") or 0)


def utc_iso(t=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wallclock() if t is None else t))


def _read_first_line(path):
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return ""


class Identity:
    """Who this process is, as other processes judge it: host, boot and pid namespace.

    Two processes may treat each other's pids as meaningful only when boot_id and pid
    namespace are equal. DBDICT_HOST / DBDICT_BOOT_ID override them (simulated hosts).
    """

    __slots__ = ("host", "boot_id", "pidns")

    def __init__(self, host, boot_id, pidns):
        self.host, self.boot_id, self.pidns = host, boot_id, pidns

    @classmethod
    def current(cls):
        # os.uname().nodename is what gethostname(2) returns on Linux, without importing socket
        host = os.environ.get("DBDICT_HOST") or os.uname().nodename
        boot_id = os.environ.get("DBDICT_BOOT_ID") or _read_first_line("/proc/sys/kernel/random/boot_id")
        if os.environ.get("DBDICT_HOST") and not os.environ.get("DBDICT_BOOT_ID"):
            boot_id = f"{boot_id}:{host}"  # a simulated host has its own boot
        try:
            pidns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pidns = ""
        return cls(host, boot_id, pidns)

    def same_machine(self, token):
        return bool(self.boot_id) and token.get("boot_id") == self.boot_id and token.get("pidns") == self.pidns


# ---------------------------------------------------------------- options

def check_timing(lease, heartbeat):
    """Reject lease/heartbeat pairs that would break fencing (H must be <= L/5)."""
    for name, value in (("lease", lease), ("heartbeat", heartbeat)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise UsageError(f"--{name} must be a positive number of seconds, not {value!r}")
    if heartbeat > lease / 5:
        raise UsageError(f"--heartbeat {heartbeat:g} is more than a fifth of --lease {lease:g}: "
                         f"a worker could be judged dead while alive")


def command_lease():
    """(lease, heartbeat) of a command's claim: at most 30 s (env DBDICT_COMMAND_LEASE may
    shorten it, for tests). Commands never heartbeat: they link, read, write and are done."""
    try:
        lease = float(os.environ.get("DBDICT_COMMAND_LEASE") or COMMAND_LEASE)
    except ValueError:
        lease = COMMAND_LEASE
    lease = min(max(lease, 1.0), COMMAND_LEASE)
    return lease, lease / 5


# ---------------------------------------------------------------- claiming

def make_token(identity, lease, heartbeat, purpose, worker=None):
    pid = os.getpid()
    return {
        "host": identity.host, "boot_id": identity.boot_id, "pidns": identity.pidns,
        "pid": pid, "start_ticks": process_start_ticks(pid), "worker": worker or f"{identity.host}:{pid}",
        "cluster_job": _cluster_job(), "lease": float(lease), "heartbeat": float(heartbeat),
        "purpose": purpose, "time": utc_iso(),
    }


def _cluster_job():
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return job


def link_claim(jobdir, epoch, token):
    """Try to make claim.<epoch> ours. True if we won, False if another process has it."""
    tok = os.path.join(jobdir, jd.token_name(token["host"]))
    try:
        fd = os.open(tok, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, json.dumps(token).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        _unlink(tok)
        raise WriteError(f"{jobdir}: cannot write a claim token: {exc.strerror or exc}") from exc
    try:
        os.link(tok, os.path.join(jobdir, jd.claim_name(epoch)))
        if seams.LOST_LINK_REPLY:
            # Test seam: the link was made but its reply is lost, as an NFS client sees when a
            # retransmitted LINK answers EEXIST. Only the link-count check below can tell.
            raise OSError(errno.EEXIST, "simulated lost reply to LINK")
        return True
    except OSError as exc:
        # On NFS a retransmitted LINK can answer EEXIST although the first one succeeded:
        # the token's own link count (from a fresh open+fstat, not the attribute cache) is
        # the truth. 2 = our token is also claim.<epoch>.
        if _fresh_nlink(tok) == 2:
            return True
        if exc.errno in (errno.EEXIST, errno.ENOENT):
            # ENOENT: our token was swept as a transient while link() stalled for a lease:
            # no claim was made, so this is a lost race like EEXIST (try the next job).
            return False
        raise WriteError(f"{jobdir}: cannot link {jd.claim_name(epoch)}: {exc.strerror or exc}") from exc
    finally:
        _unlink(tok)


def _fresh_nlink(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0
    try:
        return os.fstat(fd).st_nlink
    finally:
        os.close(fd)


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def claim_signature(path):
    """(mtime_ns, ctime_ns) of a claim from a fresh open+fstat (close-to-open revalidation)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a planted FIFO must not block us
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_mtime_ns, st.st_ctime_ns


class Observer:
    """Judges leases by watching claims: stale once seen unchanged for the claim's lease.

    One Observer lives as long as a worker loop, so a claim seen in one scan and again
    in a later one accumulates observation time. Only this process's CLOCK_BOOTTIME is used.
    """

    def __init__(self, identity=None, gone=None):
        self.identity = identity or Identity.current()
        self._seen = {}  # jobdir -> (epoch, signature, first boottime seen with it)
        self.gone = set(gone or ())  # cluster jobs the scheduler reported gone (this pass)
        self._cluster_jobs = set()  # cluster jobs named by the claims this observer saw held

    def ask_scheduler(self):
        """Scheduler-gone fast path (DESIGN 4): one batched squeue call for every cluster job
        whose claim this observer saw held; those reported gone are stale at once. Call it
        once per pass. Nothing changes where squeue is missing or does not answer."""
        if not self._cluster_jobs:
            return self.gone
        self.gone = scheduler_gone(self._cluster_jobs)
        return self.gone

    def holder_gone(self, jobdir, epoch, token, state=None):
        """Same-host fast path: the holder's pid is gone (or reused) and so is its experiment."""
        if not token or not self.identity.same_machine(token):
            return False
        if _alive(token.get("pid"), token.get("start_ticks")):
            return False
        written = Written.of(state)
        if written.epoch == epoch and _group_alive(written.pgid):
            return False
        shepherd = written.shepherd if written.epoch == epoch else None
        if isinstance(shepherd, list) and len(shepherd) == 2 and _alive(shepherd[0], shepherd[1]):
            return False  # its shepherd is still ending the attempt's processes (DESIGN.md 5.2)
        return True

    def is_stale(self, jobdir, epoch, token=None, state=None, wait=True):
        """Whether claim.<epoch> may be stolen. With wait=False only the fast path applies."""
        if token is None:
            token = _read_token(jobdir, epoch)
        if self.holder_gone(jobdir, epoch, token, state):
            return True
        job = (token or {}).get("cluster_job")
        if job:
            self._cluster_jobs.add(str(job))
            if str(job) in self.gone:
                return True
        if not wait:
            return False
        try:
            sig = claim_signature(os.path.join(jobdir, jd.claim_name(epoch)))
        except FileNotFoundError:
            return False
        now = boottime()
        seen = self._seen.get(jobdir)
        if seen is None or seen[:2] != (epoch, sig):
            self._seen[jobdir] = (epoch, sig, now)
            return False
        lease = token.get("lease", DEFAULT_LEASE) if token else DEFAULT_LEASE
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or lease <= 0:
            lease = DEFAULT_LEASE
        return now - seen[2] >= lease

    def forget(self, jobdir):
        self._seen.pop(jobdir, None)


def _read_token(jobdir, epoch):
    try:
        return jd.read_claim(jobdir, epoch)
    except OSError:
        return {}


class Written:
    """What the latest state says of the attempt that wrote it: all that booking reads of a
    state to judge a job's holder. The index keeps these fields as columns and hands them
    over as they are (`Written(epoch, status, pgid, shepherd)`), so no caller forges a state."""

    __slots__ = ("epoch", "status", "pgid", "shepherd")

    def __init__(self, epoch, status, pgid=None, shepherd=None):
        self.epoch, self.status, self.pgid, self.shepherd = epoch or 0, status, pgid, shepherd

    @classmethod
    def of(cls, state):
        """The record of a state dict (a Written passes through; None: nothing written)."""
        if isinstance(state, cls):
            return state
        book = state.get("dbdict") if isinstance(state, dict) else None
        if not isinstance(book, dict):
            return cls(0, None)
        return cls(book.get("epoch"), book.get("status"), book.get("pgid"), book.get("shepherd"))


def claim_holds(top_claim, written):
    """Whether claim.<top_claim> holds the job: it is newer than the latest state (booked),
    or that state is the `running` one its holder wrote."""
    return top_claim > written.epoch or (top_claim == written.epoch and top_claim > 0
                                         and written.status == "running")


def needs_judging(top_claim, state_epoch, status):
    """Whether a job's status may differ from the written one (a claim may hold it, or a
    `running` state lost its claim): for any other job derived_status is `status` unread.
    Lets the index skip the rest without a record per job."""
    return top_claim > (state_epoch or 0) or status == "running"


def holder_of(jobdir, listing, state):
    """(epoch, token) of the process that holds the job now, or (None, None)."""
    top = listing.claim_epoch
    if claim_holds(top, Written.of(state)):
        return top, _read_token(jobdir, top)
    return None, None


def judge(jobdir, listing, state, observer, wait=True):
    """Why the job is not runnable now (a NotRunnable), or None when it may be claimed."""
    book = state["dbdict"]
    epoch, token = holder_of(jobdir, listing, state)
    if epoch is not None:
        if observer.is_stale(jobdir, epoch, token, state, wait=wait):
            return None
        return NotRunnable(held_message(jobdir, epoch, token, booked=epoch > book["epoch"]))
    if book["status"] == "ready":
        return None
    return NotRunnable(f"{jobdir}: job is {book['status']}")


def held_message(jobdir, epoch, token, booked=False):
    token = token or {}
    who = f"{token.get('host', '?')} pid {token.get('pid', '?')}"
    if token.get("cluster_job"):
        who += f" (cluster job {token['cluster_job']})"
    what = "booked" if booked else "running"
    return f"{jobdir}: {what} by {who} since {token.get('time', '?')} ({jd.claim_name(epoch)})"


def scheduler_gone(cluster_jobs):
    """The cluster jobs (SLURM tasks) that the scheduler reports gone, in one squeue call."""
    ids = {str(j) for j in cluster_jobs if j}
    if not ids:
        return set()
    from . import scheduler  # only where a claim names a cluster job

    return {j for j, gone in scheduler.jobs_gone(ids).items() if gone}


def claim_age(jobdir, epoch):
    """Seconds since claim.<epoch>'s mtime by this host's wall clock, or None. A display hint
    only (`heartbeat overdue`): never used to steal, requeue or cancel (clocks differ)."""
    try:
        return max(0.0, wallclock() - os.stat(os.path.join(jobdir, jd.claim_name(epoch))).st_mtime)
    except OSError:
        return None


def derived_status(jobdir, top_claim, state, token=None, identity=None, gone=(), observer=None):
    """The one derived status of a job (DESIGN 3, 4), for the index, status, requeue, cancel.

    `top_claim` is the highest claim epoch listed, `state` the latest state (or its
    `Written` record). Returns `booked` or `running` while a claim holds the job and `stale`
    only when booking can prove its holder gone: the same-host fast path, the scheduler
    reporting the task named by the holder's token gone (`gone`, or `observer.gone`), or a
    long-lived `observer` that saw the claim unchanged for its lease. Otherwise the written
    status. No wall clock is compared with a file's time here.
    """
    written = Written.of(state)
    if not claim_holds(top_claim, written):
        return "stale" if written.status == "running" else written.status
    raw = "booked" if top_claim > written.epoch else "running"
    if token is None:
        token = _read_token(jobdir, top_claim)
    gone = set(gone) | (observer.gone if observer else set())
    if token.get("cluster_job") and str(token["cluster_job"]) in gone:
        return "stale"
    # A one-shot view has no observation history: only the fast paths apply (no waiting).
    judge_by = observer or Observer(identity)
    if judge_by.is_stale(jobdir, top_claim, token, written, wait=observer is not None):
        return "stale"
    return raw


def derived_statuses(jobs, identity=None):
    """derived_status of many jobs as one one-shot view (the index's): `jobs` is
    [(jobdir, top_claim, Written)]. One claim read per held job, and one batched squeue call
    for the cluster tasks their holders' tokens name (none when no token names one).

    The scheduler-gone path judges the holder, so it reads the top claim's token: the state's
    `cluster_job` names the attempt that wrote the state, which is not the holder once a newer
    claim exists (a booked job, a steal, a command's claim), so judging by it would call a job
    stale whose new holder is alive, or miss a booked one whose holder's task is gone.
    """
    identity = identity or Identity.current()
    tokens = [_read_token(jobdir, top) if claim_holds(top, written) else None for jobdir, top, written in jobs]
    gone = scheduler_gone({token.get("cluster_job") for token in tokens if token})
    return [derived_status(jobdir, top, written, token=token, identity=identity, gone=gone)
            for (jobdir, top, written), token in zip(jobs, tokens)]


def heartbeat_overdue(jobdir, epoch, token):
    """Seconds since the last heartbeat when more than two heartbeats have passed, else None
    (by this host's clock: a hint for people, shown before the lease runs out)."""
    age = claim_age(jobdir, epoch) if epoch else None
    beat = (token or {}).get("heartbeat", DEFAULT_HEARTBEAT)
    if isinstance(beat, bool) or not isinstance(beat, (int, float)) or beat <= 0:
        beat = DEFAULT_HEARTBEAT
    return round(age, 1) if age is not None and age > 2 * beat else None


def run_attempts(jobdir, state, epoch, own=None):
    """Run claims since the last requeue, up to `epoch` (DESIGN 4: command claims never count).

    The latest state S carries the count up to S.epoch (its writer kept it); claims newer
    than S wrote no state, so only their tokens are read: usually one.
    """
    book = state["dbdict"]
    s_epoch, req = int(book.get("epoch", 0) or 0), int(book.get("requeue_epoch", 0) or 0)
    count = 0 if req >= s_epoch else int(book.get("attempts", 0) or 0)
    for k in range(max(s_epoch, req) + 1, epoch + 1):
        token = own if (k == epoch and own is not None) else _read_token(jobdir, k)
        if token.get("purpose", "run") == "run":
            count += 1
    return count


class Claim:
    """A claim this process won: the right to write `state.<epoch>.yaml`, while not fenced."""

    def __init__(self, jobdir, epoch, token, state, linked_at, names=None):
        self.jobdir = jobdir
        self.epoch = epoch
        self.token = token
        self.state = state  # the state read after winning (what this epoch starts from)
        self.names = names  # the job directory's names in the listing taken after winning
        self.lease = token["lease"]
        self.path = os.path.join(jobdir, jd.claim_name(epoch))
        self.last_ok = linked_at  # the link counts as the first heartbeat, from just before it
        self.lost = None
        self.taken_by = None
        self.overtaken = None  # set by write_state when a newer claim existed after its rename
        self._transients = {}  # name -> (signature, boottime first seen with it)
        self.heartbeat = token.get("heartbeat", DEFAULT_HEARTBEAT)
        self.next_beat = linked_at + self.heartbeat  # the one heartbeat schedule of this claim

    def keep_alive(self):
        """Heartbeat when one is due (the worker's loop and its long steps, such as scratch
        copies, all call this). True while this holder still holds the job."""
        now = boottime()
        if now >= self.next_beat:
            self.next_beat = now + self.heartbeat
            self.beat()
        return self.fenced() is None

    def check(self):
        """Look now for a newer claim (one listing). True while this holder holds the job."""
        if self.fenced() is None:  # the heartbeat age first: it is the reason that came first
            self._check_newer()
        return self.fenced() is None

    def beat(self):
        """Heartbeat: set the claim's mtime, then look for a newer claim. Returns fenced().

        A holder already fenced (e.g. resumed after SIGSTOP) must not refresh its claim:
        an observer may have judged it stale meanwhile, so fencing is sticky.
        """
        if self.fenced() is None:
            before = boottime()  # noted before the call: a slow utime must not extend the lease
            try:
                os.utime(self.path, None)
                self.last_ok = before
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ESTALE):
                    self.lost = f"{jd.claim_name(self.epoch)} disappeared"
            listing = self._check_newer()
            if listing is not None and self.lost is None:
                self._sweep_transients(listing.names)
        return self.fenced()

    def _sweep_transients(self, names):
        """Remove `.tok.*` / `.tmp.*` files that dead processes left (DESIGN.md 4).

        Judged by observation like a lease: a file seen unchanged for L (a token: also with
        link count 1, so never one that became a claim) belongs to nobody alive. Our own
        transient files never exist during a heartbeat (writes and beats share a thread).
        """
        now = boottime()
        seen = {}
        for name in names:
            if not name.startswith(jd.TRANSIENT_PREFIXES):
                continue
            path = os.path.join(self.jobdir, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            sig = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink)
            first = self._transients.get(name)
            seen[name] = first if first is not None and first[0] == sig else (sig, now)
            # A token with link count 2 is also a claim whose maker was killed before unlinking
            # it: removing that name leaves the claim. Heartbeats on the claim change the
            # shared inode's times, so a live holder's token never looks unchanged for L.
            if now - seen[name][1] >= self.lease:
                _unlink(path)
                del seen[name]
        self._transients = seen

    def _check_newer(self):
        """List the job directory; a claim newer than ours means we lost the job."""
        try:
            listing = jd.list_job(self.jobdir)
        except JobNotFound:
            self.lost = self.lost or "the job directory disappeared"
            return None
        except OSError as exc:
            if exc.errno == errno.ESTALE:
                self.lost = self.lost or "the job directory disappeared (ESTALE)"
            return None  # a passing I/O error: the heartbeat age decides (fencing at L/2)
        top = listing.claim_epoch
        if top > self.epoch and self.lost is None:
            token = _read_token(self.jobdir, top)
            self.lost = f"{jd.claim_name(top)} was taken by {token.get('host', '?')} pid {token.get('pid', '?')} " \
                        f"({token.get('purpose', 'steal')})"
            self.taken_by = token
        return listing

    def fenced(self):
        """The reason this holder must write nothing more, or None (once fenced, always)."""
        if self.lost is None:
            age = boottime() - self.last_ok
            if age > self.lease / 2:
                self.lost = f"last heartbeat {age:.1f}s ago is older than half the lease ({self.lease:g}s)"
        return self.lost

    def write_state(self, state):
        """Commit `state` as state.<epoch>.yaml, unless fenced (then raise Fenced).

        After the rename the directory is listed again: a claim newer than ours may have
        been made between the check and the rename (we were paused there), and its holder
        may have started from an older state, hiding ours. `overtaken` then says so, and
        the attempt must report the job lost, never its own outcome (runner._commit).
        """
        self._check_newer()
        reason = self.fenced()
        if reason:
            raise Fenced(f"{self.jobdir}: not writing: {reason}")
        state["dbdict"]["epoch"] = self.epoch
        try:
            jd.write_state_file(self.jobdir, self.epoch, state)
        except WriteError:
            if self.check():
                raise
            # Our temporary file was swept (sweep_hidden_tmp): a newer state exists.
            raise Fenced(f"{self.jobdir}: not written: {self.fenced()}") from None
        self.state = state
        listing = self._check_newer()
        if self.taken_by is not None and self.overtaken is None:
            self.overtaken = (f"state.{self.epoch}.yaml was written, but {self.lost}: this attempt's "
                              f"commit may be hidden by the newer holder's")
            if listing is not None and (listing.state_epoch or 0) > self.epoch:
                # A newer state hides ours: remove it (no reader can need it), and let the
                # link name the newest (it may name ours now).
                _unlink(os.path.join(self.jobdir, jd.state_name(self.epoch)))
                jd.update_state_link(self.jobdir)
        elif listing is not None and state["dbdict"]["status"] in FINAL:
            _sweep_ended_tokens(self.jobdir, listing)


def _sweep_ended_tokens(jobdir, listing):
    """A final commit removes the `.tok.*` files that killed bookers left (DESIGN 4), at once:
    a heartbeat sweeps them only after seeing them unchanged for L, and a job that ends
    within L has no more heartbeats. Removed: a token with link count 1 (it never became a
    claim: anyone may remove it), and one that is also a claim this listing shows (claims
    up to ours; its booker, if alive, is done with it, or finds it gone and counts the race
    lost, which it is). A token of a newer claim made since the listing is left alone.
    Costs nothing where no token is listed."""
    claims = None
    for name in listing.names:
        if not name.startswith(jd.TOKEN_PREFIX):
            continue
        path = os.path.join(jobdir, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_nlink == 2:
            if claims is None:
                claims = set()
                for epoch in listing.claim_epochs:
                    try:
                        claims.add(os.lstat(os.path.join(jobdir, jd.claim_name(epoch))).st_ino)
                    except OSError:
                        pass
            if st.st_ino not in claims:
                continue
        elif st.st_nlink != 1:
            continue
        _unlink(path)


def claim(jobdir, *, identity=None, observer=None, lease=DEFAULT_LEASE, heartbeat=DEFAULT_HEARTBEAT,
          purpose="run", wait=True, force=False, worker=None, first=None, before_link=None):
    """Book a job: read its state, and link claim.<top+1> if it is runnable (or if `force`).

    `first`: the (listing, state) the caller has just read (discovery), so it is not read
    twice. `before_link(epoch)`: called just before the link (a requeue's live markers).
    Returns a Claim whose `.state` is the state read after winning; raises NotRunnable when
    the job is held, final, or another process won the race.
    """
    identity = identity or Identity.current()
    observer = observer or Observer(identity)
    listing, state = first or jd.read_latest_state(jobdir)
    if not force:
        problem = judge(jobdir, listing, state, observer, wait=wait)
        if problem is None and first is not None and holder_of(jobdir, listing, state)[0] is not None:
            # A steal judged on the caller's earlier read: the holder may have committed and
            # exited since. Judge again on a fresh read (costs only steals anything).
            listing, state = jd.read_latest_state(jobdir)
            problem = judge(jobdir, listing, state, observer, wait=wait)
        if problem:
            raise problem
    epoch = max(listing.claim_epoch, state["dbdict"]["epoch"]) + 1
    token = make_token(identity, lease, heartbeat, purpose, worker)
    if before_link is not None:
        before_link(epoch)
    linked_at = boottime()
    if not link_claim(jobdir, epoch, token):
        raise NotRunnable(held_message(jobdir, epoch, _read_token(jobdir, epoch), booked=True))
    observer.forget(jobdir)
    if not force and plain_ready(listing, state):
        # A `ready` state with no claim above it is its writer's last act (a run's requeue,
        # a give-back, a command, create): no one but us may write a state now, so the read
        # we judged on is the state our epoch starts from (DESIGN.md 9.e). Saves a listing
        # and a read per booking.
        return Claim(jobdir, epoch, token, state, linked_at, names=list(listing.names) + [jd.claim_name(epoch)])
    # A fresh listing: the state may have changed between our read and our link (a steal:
    # the old holder may still have committed).
    listing, state = jd.read_latest_state(jobdir)
    return Claim(jobdir, epoch, token, state, linked_at, names=listing.names)


def plain_ready(listing, state):
    """The state read is `ready` and no claim is newer than it: nobody holds the job."""
    book = state["dbdict"]
    return book["status"] == "ready" and listing.claim_epoch <= book["epoch"]


def give_back(held):
    """Every claim gets its state: re-commit the state unchanged under our epoch.

    Never `running` under a claim that does not run it (DESIGN 4): a give-back that raced a
    holder (whom our claim has now fenced) hands the job back as `ready`.
    """
    state = held.state
    if state["dbdict"].get("status") == "running":
        state["dbdict"]["status"] = "ready"
    held.write_state(state)
    jd.remove_older_states(held.jobdir, held.epoch)


def runnable_after_claim(held):
    """Whether the state read after winning still allows running (else give it back)."""
    return held.state["dbdict"]["status"] in RUNNABLE_AFTER_STALE

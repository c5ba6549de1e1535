"""Chaos: workers killed with kill -9 and paused with SIGSTOP at random while they book and run.

Whatever happens to the workers, the protocol promises (DESIGN.md 3, 4): every job ends
`done`; no state file is torn; each job's state was written under its top claim; the
committed result is that job's own; and (5.1) no file of a committed job's workdir came
from a fenced attempt: the experiment tags every file it writes (tmp + rename) with its
epoch and records what its workdir held when it started, so each tagged file must be the
committed attempt's own or one it started from, byte for byte (a fenced attempt's late
write, or an in-place change through a shared hard link, would show). A job whose worker was paused or killed mid-run may run
twice (the log shows it) — what must hold is that exactly one attempt's result is committed.
The counts (kills, pauses, steals, double executions) are printed for the report: run with
`-s` to see them.
"""

import json
import os
import random
import signal
import time

import pytest

from dbdict_fs import jobdir as jd
from dbdict_fs.create import create_jobs

import procs
from conftest import EXPERIMENTS
from procs import check_job_files, read_log, wait_for

LEASE, HEARTBEAT = 3.0, 0.5


@pytest.fixture
def hosts(tmp_path):
    with procs.Hosts(tmp_path / "procs") as h:
        yield h


def all_done(paths):
    for path in paths:
        try:
            _, state = jd.read_latest_state(path)
        except Exception:  # noqa: BLE001 - a listing racing a write: look again later
            return False
        if state["dbdict"]["status"] != "done":
            return False
    return True


def attempt_job(pids):
    """(job directory, epoch) of the attempt whose processes `pids` are (their cwd is its
    workdir), or None."""
    for pid in pids:
        try:
            jobdir = os.path.dirname(os.readlink(f"/proc/{pid}/cwd"))
            return jobdir, jd.list_job(jobdir).claim_epoch
        except (OSError, jd.JobNotFound):
            continue
    return None


def committed_after(jobdir, epoch):
    """Whether a newer attempt than `epoch` committed the job (done)."""
    try:
        _, state = jd.read_latest_state(jobdir)
    except Exception:  # noqa: BLE001 - mid-write: not yet
        return False
    return state["dbdict"]["epoch"] > epoch and state["dbdict"]["status"] == "done"


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def descendants(pid):
    """Every process below `pid` (the attempt's shepherd, experiment, its children), parents
    first, found by ppid chains in /proc."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            ppid = procs.proc_ppid(int(name))
            if ppid:
                children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def committed_workdir_files(path, state):
    """Check that every tagged file `JOBDIR/workdir` shows came from the committed attempt C
    (`ran_epoch`) or is, byte for byte, one that C found there when it started (what it
    started from: its ancestors' work, copied by hard links or reused in place). A fenced
    attempt's write is neither: it has another epoch and is not what C found. Returns
    (files C wrote, files C inherited)."""
    c = state["ran_epoch"]
    found = dict(state["found"])
    workdir = os.path.join(path, jd.WORKDIR)
    assert os.path.realpath(workdir) == os.path.realpath(os.path.join(path, state["dbdict"]["workdir"])), path
    own = inherited = 0
    for name in sorted(os.listdir(workdir)):
        if not (name.startswith("tag.") or name == "ckpt"):
            continue
        with open(os.path.join(workdir, name)) as f:
            text = f.read()
        epoch, step, _ = text.split()
        if int(epoch) == c:
            own += 1
            if name == "ckpt":
                assert int(step) == 7, f"{path}: ckpt is C's step {step}, not its last (7)"
            continue
        assert found.get(name) == text, (
            f"{path}: workdir/{name} holds {text!r}, written by epoch {epoch}, but the committed "
            f"attempt {c} started from {found.get(name)!r}: a fenced attempt's write")
        assert int(epoch) < c, (path, name, text)
        inherited += 1
    assert own == 9, f"{path}: the committed attempt {c} wrote {own} of its 9 files"  # 8 tags + ckpt
    return own, inherited


def run_chaos(tree, hosts, tmp_path, *, n_workers, n_jobs, duration, seed, finish_timeout,
              lease=LEASE, heartbeat=HEARTBEAT, sides=None):
    """`sides`: [(the tree as a host sees it, that host's name)]; the workers take turns
    among them (tests/test_multihost.py: two caching mounts). Default: this host, `tree`."""
    rng = random.Random(seed)
    log = str(tmp_path / "runs.log")
    configs = [{"i": i, "log": log, "sleep": round(rng.uniform(0.2, 0.5), 2)} for i in range(n_jobs)]
    paths = create_jobs(tree, configs, f"{os.path.join(EXPERIMENTS, 'gap_exps.py')}:tagged").created
    assert len(paths) == n_jobs
    sides = sides or [(str(tree), None)]
    new_worker = procs.worker_starter(hosts, sides, lease, heartbeat)

    workers = [new_worker() for _ in range(n_workers)]
    counts = dict(kills=0, pauses=0, long_pauses=0, restarts=0, suspends=0)
    resume_at = {}  # worker -> (time at which it gets SIGCONT, the attempt's processes stopped with it,
    #                            and for those: the job and epoch a newer attempt must commit first)

    def resume_due(now, everyone=False):
        for w, (at, attempt, job) in list(resume_at.items()):
            if attempt and not everyone and now < at + 20 and not committed_after(*job):
                continue  # a suspended attempt wakes once a newer one committed its job
            if everyone or now >= at:
                # A suspended attempt wakes experiment first, its worker last (the order in
                # which a fenced attempt's late writes are most likely to land)
                for pid in attempt:
                    _signal(pid, signal.SIGCONT)
                    time.sleep(0.1)
                w.signal(signal.SIGCONT)
                del resume_at[w]

    start = time.monotonic()
    next_action = start + rng.uniform(0.3, 1.0)
    while time.monotonic() - start < duration:
        now = time.monotonic()
        resume_due(now)
        if all_done(paths):
            break
        if now >= next_action:
            next_action = now + rng.uniform(0.2, 0.8)
            candidates = [w for w in workers if w.running() and w not in resume_at]
            if candidates:
                w = rng.choice(candidates)
                if rng.random() < 0.45:
                    w.kill9()
                    counts["kills"] += 1
                    workers.remove(w)
                    workers.append(new_worker())  # a fresh worker takes the dead one's place
                    counts["restarts"] += 1
                else:
                    # half the pauses outlast the lease: the job is stolen and the worker, when
                    # it resumes, must find itself fenced
                    pause = rng.uniform(0.1, 1.2) if rng.random() < 0.5 else rng.uniform(lease + 0.5, 2 * lease)
                    counts["pauses"] += 1
                    counts["long_pauses"] += pause > lease
                    w.signal(signal.SIGSTOP)
                    # a long pause stops the whole attempt (a SLURM suspend, a hung mount),
                    # long enough for a steal to commit first: its experiment wakes up still
                    # writing into its own workdir, which must not be what the job shows
                    suspended = sum(1 for _, a, _ in resume_at.values() if a)
                    attempt = descendants(w.pid) if pause > lease and suspended < 2 else []
                    for pid in attempt:
                        _signal(pid, signal.SIGSTOP)
                    job = attempt_job(attempt)
                    if not job or len(attempt) < 3:  # shepherd, experiment, its writing helper
                        for pid in reversed(attempt):
                            _signal(pid, signal.SIGCONT)
                        attempt = []
                    counts["suspends"] += bool(attempt)
                    resume_at[w] = (now + pause, list(reversed(attempt)), job)
        time.sleep(0.02)
    counts["chaos_seconds"] = round(time.monotonic() - start, 1)
    # the plain pauses end now; the suspended attempts once a newer attempt committed their
    # job (idle --wait workers steal it within a lease or so), so their late writes land last
    for w, (at, attempt, job) in list(resume_at.items()):
        if not attempt:
            resume_at[w] = (0, [], None)
    resume_due(time.monotonic())
    deadline = time.monotonic() + 30
    while resume_at and time.monotonic() < deadline:
        resume_due(time.monotonic() - 20)  # not by their own time: by their job's commit
        time.sleep(0.1)
    resume_due(0, everyone=True)
    if not any(w.running() for w in workers):
        workers.append(new_worker())  # someone must finish what is left

    wait_for(lambda: all_done(paths), finish_timeout, interval=0.2,
             what="every job to be done after the chaos")
    for w in workers:  # --wait workers leave once nothing is ready or running
        w.wait(lease * 4 + 30)

    runs = read_log(log)
    steals = twice = late_states = give_backs = workdir_own = workdir_inherited = 0
    for i, path in enumerate(paths):
        states = check_job_files(path)  # every state file parses, and says its own epoch
        listing, state = jd.read_latest_state(path)
        book = state["dbdict"]
        top = listing.claim_epoch
        assert book["status"] == "done", (path, book)
        assert book["epoch"] == top, f"{path}: state of epoch {book['epoch']} under claim.{top}"
        assert state["result"] == i and state["i"] == i, (path, state.get("result"))
        assert i in runs, f"job {i} is done but never ran"
        token = jd.read_claim(path, top)
        if book["pid"] != token["pid"]:
            # a give-back: the winner of `top` found the job already done and re-committed
            # that state unchanged; it must then be the state of an earlier holder
            holders = {jd.read_claim(path, e).get("pid") for e in range(1, top)}
            assert book["pid"] in holders, (path, book, token)
            give_backs += 1
        late_states += sum(1 for e in states if e < top)  # a late write hidden by a newer state
        steals += len(listing.claim_epochs) > 1
        twice += len(runs[i]) > 1
        for name in os.listdir(path):
            assert not name.startswith("claim.") or name[6:].isdigit(), name
        own, inherited = committed_workdir_files(path, state)
        workdir_own += own
        workdir_inherited += inherited
    assert sorted(runs) == list(range(n_jobs))
    assert not any(procs.experiment_processes(seen_as) for seen_as, _ in sides), "an experiment outlived its worker"
    counts.update(jobs=n_jobs, workers=n_workers, steals=steals, ran_twice=twice,
                  executions=sum(len(p) for p in runs.values()), hidden_late_states=late_states,
                  give_backs=give_backs, workdir_own=workdir_own, workdir_inherited=workdir_inherited,
                  leftover_tmp=sum(1 for p in paths for n in os.listdir(p) if n.startswith((".tmp.", ".tok."))))
    print("\nchaos:", json.dumps(counts, sort_keys=True))
    return counts


def test_chaos_kill9_and_sigstop(tree, hosts, tmp_path):
    counts = run_chaos(tree, hosts, tmp_path, n_workers=4, n_jobs=70, duration=25, seed=20261125,
                       finish_timeout=90)
    assert counts["kills"] >= 3 and counts["pauses"] >= 3, counts  # the chaos really happened
    assert counts["suspends"] >= 1, counts


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_chaos_long(tree, hosts, tmp_path, seed):
    counts = run_chaos(tree, hosts, tmp_path, n_workers=8, n_jobs=300, duration=120, seed=seed,
                       finish_timeout=300)
    assert counts["kills"] >= 20 and counts["long_pauses"] >= 5, counts

"""The booking protocol (DESIGN.md 4, 5) proved with real processes and real files.

Workers run as real processes on simulated hosts (tests/procs.py: each under a shim that is
its host's init). What is checked is what the protocol promises: every job runs to `done`
exactly once when nobody dies; a stolen job's old holder writes nothing that shows; leases
expire by observation only (never by comparing clocks), except for the same-host dead-pid
fast path; no experiment outlives its worker.
"""

import multiprocessing
import os
import signal
import time

import pytest

from dbdict_fs import booking
from dbdict_fs import jobdir as jd
from dbdict_fs.create import create_jobs
from dbdict_fs.errors import Fenced, NotRunnable

import procs
from conftest import experiment, run_cli
from procs import claim_epochs, pid_gone, read_log, wait_for


@pytest.fixture
def hosts(tmp_path):
    with procs.Hosts(tmp_path / "procs") as h:
        yield h


def make_jobs(tree, configs, name="append_log"):
    created = create_jobs(tree, list(configs), experiment(name)).created
    return created


def latest(jobdir):
    listing, state = jd.read_latest_state(jobdir)
    return listing, state


def state_is(jobdir, status, epoch=None):
    try:
        _, state = jd.read_latest_state(jobdir)
    except Exception:  # noqa: BLE001 - mid-write listings are retried by the poll
        return False
    book = state["dbdict"]
    return book["status"] == status and (epoch is None or book["epoch"] == epoch)


def claim_path(jobdir, epoch):
    return os.path.join(jobdir, jd.claim_name(epoch))


def child_pid(jobdir):
    """The pid the sleeper experiment wrote into its workdir (None until it has)."""
    try:
        with open(os.path.join(jobdir, "workdir", "child.pid")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def wait_claim(jobdir, epoch, timeout, detail=None):
    """Poll (every 10 ms) until claim.<epoch> exists; returns time.time() when first seen."""
    wait_for(lambda: os.path.exists(claim_path(jobdir, epoch)), timeout, interval=0.01,
             what=f"claim.{epoch} in {jobdir}", detail=detail)
    return time.time()


def running_by(jobdir, pid, min_epoch):
    """The epoch at which `pid` runs the job (>= min_epoch), or None. Under heavy load a
    worker may fence itself (no heartbeat for L/2) and book the job again at a later epoch."""
    try:
        _, state = jd.read_latest_state(jobdir)
    except Exception:  # noqa: BLE001
        return None
    book = state["dbdict"]
    if book["status"] == "running" and book.get("pid") == pid and book["epoch"] >= min_epoch:
        return book["epoch"]
    return None


def leftovers(jobdir):
    return [n for n in os.listdir(jobdir) if n.startswith((".tok.", ".tmp."))]


# ---------------------------------------------------------------- 1. exactly once

def _exactly_once(tree, hosts, tmp_path, n_workers, n_jobs, timeout):
    log = str(tmp_path / "runs.log")
    paths = make_jobs(tree, ({"i": i, "log": log} for i in range(n_jobs)))
    assert len(paths) == n_jobs
    workers = [hosts.add(["work", tree, "-q", "--lease", 60, "--heartbeat", 2], barrier=True)
               for _ in range(n_workers)]
    hosts.go()  # every worker has started and imported dbdict_fs: they race from here
    codes = [w.wait(timeout) for w in workers]
    assert codes == [0] * n_workers, "\n".join(w.output() for w in workers)

    runs = read_log(log)
    assert sorted(runs) == list(range(n_jobs)), "some job never ran"
    twice = {i: pids for i, pids in runs.items() if len(pids) != 1}
    assert not twice, f"jobs that ran more than once: {twice}"
    per_worker = {w.pid: 0 for w in workers}
    for i, path in enumerate(paths):
        listing, state = latest(path)
        book = state["dbdict"]
        assert book["status"] == "done" and state["result"] == i, (path, book)
        # nobody died, so nobody stole: one claim per job, and its state is that epoch's
        assert sorted(listing.claim_epochs) == [1] and book["epoch"] == listing.claim_epoch == 1, (path, listing.names)
        assert listing.state_epochs == [1]
        assert book["pid"] == jd.read_claim(path, 1)["pid"]  # written by the claim's holder
        per_worker[book["pid"]] += 1
        assert not leftovers(path)
    assert sum(per_worker.values()) == n_jobs
    assert sum(1 for n in per_worker.values() if n) >= 2, f"the workers did not race: {per_worker}"
    return per_worker


def test_exactly_once_4_workers_120_jobs(tree, hosts, tmp_path):
    _exactly_once(tree, hosts, tmp_path, 4, 120, timeout=150)


@pytest.mark.slow
def test_exactly_once_8_workers_500_jobs(tree, hosts, tmp_path):
    _exactly_once(tree, hosts, tmp_path, 8, 500, timeout=900)


# ---------------------------------------------------------------- 3. a SIGSTOPped holder

@pytest.mark.parametrize("holder", ["run", "work"])
def test_sigstopped_holder_is_stolen_and_writes_nothing(tree, hosts, holder):
    lease, beat = 3.0, 0.5
    timing = ["--lease", lease, "--heartbeat", beat]
    job = make_jobs(tree, [{"sleep": 6}], "sleeper")[0]
    a = hosts.add([holder, job if holder == "run" else tree, *timing], name="A")
    wait_for(lambda: state_is(job, "running", 1) and child_pid(job), 60, what="A to run the job")
    a_child = child_pid(job)
    assert not pid_gone(a_child)

    a.signal(signal.SIGSTOP)
    t_stop = time.time()
    b = hosts.add(["work", tree, "--wait", *timing], name="B")

    # A's experiment hears nothing from its stopped worker and kills itself after L/2
    wait_for(lambda: pid_gone(a_child), lease / 2 + 10, what="A's experiment to die")
    assert "no word from the worker" in open(os.path.join(job, "stderr")).read()

    # B steals only once it has seen claim.1 unchanged for the lease
    t_steal = wait_claim(job, 2, lease + 30, detail=b.output)
    last_beat = os.stat(claim_path(job, 1)).st_mtime
    assert t_steal - last_beat >= lease - 0.05, (t_steal - last_beat)
    assert t_steal - t_stop >= lease / 2
    assert jd.read_claim(job, 2)["pid"] == b.pid
    b_epoch = wait_for(lambda: running_by(job, b.pid, 2), 30, what="B to start the job", detail=b.output)

    # A resumes while B runs the job: A is fenced and writes nothing
    claim1_before = os.stat(claim_path(job, 1)).st_mtime_ns
    a.signal(signal.SIGCONT)
    code = a.wait(30)
    out = a.output()
    assert claim1_before == os.stat(claim_path(job, 1)).st_mtime_ns, "A heartbeat a stolen claim"
    listing, state = latest(job)
    assert listing.state_epochs == [b_epoch], f"A's late write shows: {listing.names}"
    assert state["dbdict"]["pid"] == b.pid
    if holder == "run":
        assert code == 4, out
        assert "no longer holds the job" in out and "half the lease" in out, out
    else:  # the worker loop reports the attempt lost, then finds nothing it may run
        assert code == 0, out
        assert "lost" in out and "no longer holds the job" in out, out

    assert b.wait(60) == 0, b.output()
    listing, state = latest(job)
    book = state["dbdict"]
    assert book["status"] == "done" and state["result"] == "slept"
    assert book["epoch"] == listing.claim_epoch >= b_epoch and book["pid"] == b.pid
    assert listing.state_epochs == [book["epoch"]] and not leftovers(job)
    assert not procs.experiment_processes(tree)


# ---------------------------------------------------------------- 4. hosts and the fast path

def test_other_host_steals_only_after_observing_the_lease(tree, hosts):
    lease, beat = 4.0, 0.5
    timing = ["--lease", lease, "--heartbeat", beat]
    job = make_jobs(tree, [{"sleep": 5}], "sleeper")[0]
    a = hosts.add(["work", tree, *timing], name="A", host="hostA", clock_offset=300)
    wait_for(lambda: state_is(job, "running", 1) and child_pid(job), 60, what="A to run the job")
    a_child = child_pid(job)
    b = hosts.add(["work", tree, "--wait", *timing], name="B", host="hostB", clock_offset=-300)
    time.sleep(1.0)  # B is watching A's live, heartbeating claim
    assert claim_epochs(job) == [1] and state_is(job, "running", 1)

    t_kill = time.time()
    assert a.kill9() == 128 + signal.SIGKILL
    wait_for(lambda: pid_gone(a_child), 10, what="A's experiment to die with A")
    t_steal = wait_claim(job, 2, lease + 30, detail=b.output)
    last_beat = os.stat(claim_path(job, 1)).st_mtime
    # A's pid is gone, but on another "host" a pid means nothing: B must wait the lease
    assert t_steal - last_beat >= lease - 0.05, f"stolen {t_steal - last_beat:.2f}s after the last heartbeat"
    assert t_steal - t_kill >= lease / 2, f"stolen {t_steal - t_kill:.2f}s after the kill"
    token_a, token_b = jd.read_claim(job, 1), jd.read_claim(job, 2)
    assert (token_a["host"], token_b["host"]) == ("hostA", "hostB")
    assert token_a["boot_id"] != token_b["boot_id"]
    assert token_b["pid"] == b.pid

    assert b.wait(60) == 0, b.output()
    listing, state = latest(job)
    book = state["dbdict"]
    assert book["status"] == "done" and state["result"] == "slept"
    assert book["epoch"] == listing.claim_epoch >= 2 and book["host"] == "hostB" and book["pid"] == b.pid
    # the clocks are 10 minutes apart and were only ever recorded, never compared
    start_a = time.strptime(token_a["time"], "%Y-%m-%dT%H:%M:%SZ")
    start_b = time.strptime(token_b["time"], "%Y-%m-%dT%H:%M:%SZ")
    gap = time.mktime(start_a) - time.mktime(start_b)
    assert 600 - 60 < gap < 600 + 60, gap


def test_same_host_worker_takes_a_dead_workers_job_at_once(tree, hosts):
    lease, beat = 60.0, 1.0  # a steal within seconds can only be the fast path
    timing = ["--lease", lease, "--heartbeat", beat]
    job = make_jobs(tree, [{"sleep": 4}], "sleeper")[0]
    a = hosts.add(["work", tree, *timing], name="A", host="nodeX")
    wait_for(lambda: state_is(job, "running", 1) and child_pid(job), 60, what="A to run the job")
    b = hosts.add(["work", tree, "--wait", *timing], name="B", host="nodeX")
    time.sleep(1.0)
    assert claim_epochs(job) == [1] and state_is(job, "running", 1)  # A is alive: B leaves it alone
    t_kill = time.time()
    a.kill9()
    t_steal = wait_claim(job, 2, 30, detail=b.output)
    assert t_steal - t_kill < 10, f"took {t_steal - t_kill:.1f}s: not the fast path"
    assert jd.read_claim(job, 2)["pid"] == b.pid
    assert b.wait(60) == 0, b.output()
    listing, state = latest(job)
    assert state["dbdict"]["status"] == "done" and state["dbdict"]["epoch"] == listing.claim_epoch == 2


def test_one_shot_run_refuses_a_live_holder_and_takes_a_dead_ones_job(tree, hosts):
    job = make_jobs(tree, [{"sleep": 4}], "sleeper")[0]
    a = hosts.add(["work", tree, "--lease", 60, "--heartbeat", 1], name="A")
    wait_for(lambda: state_is(job, "running", 1) and child_pid(job), 60, what="A to run the job")

    refused = run_cli("run", job, "--lease", 60, "--heartbeat", 1)
    assert refused.returncode == 4, refused.stderr
    assert f"pid {a.pid}" in refused.stderr and "claim.1" in refused.stderr, refused.stderr
    assert claim_epochs(job) == [1] and state_is(job, "running", 1)  # refused, and nothing changed

    a.kill9()
    t0 = time.monotonic()
    taken = run_cli("run", job, "--lease", 60, "--heartbeat", 1)
    assert taken.returncode == 0, taken.stderr
    assert time.monotonic() - t0 < 30
    listing, state = latest(job)
    assert state["dbdict"]["status"] == "done" and state["dbdict"]["epoch"] == listing.claim_epoch == 2


@pytest.mark.parametrize("reap", [
    "worker",  # the worker's shell reaped it; its orphaned experiment is a zombie under init
    "none",  # the worker itself is a zombie too (its parent is an init that never reaps)
])
def test_fast_path_when_init_does_not_reap(tree, hosts, reap):
    job = make_jobs(tree, [{"sleep": 3}], "sleeper")[0]
    a = hosts.add(["work", tree, "--lease", 60, "--heartbeat", 1], name="A", reap=reap)
    wait_for(lambda: state_is(job, "running", 1) and child_pid(job), 60, what="A to run the job")
    experiment = child_pid(job)
    assert state_is(job, "running", 1)
    orphan = latest(job)[1]["dbdict"]["shepherd"][0]  # the shepherd reaps the experiment; it is the orphan
    a.kill9()
    wait_for(lambda: pid_gone(experiment), 10, what="the experiment to die")
    wait_for(lambda: procs.proc_state(orphan) == "Z", 10, what="the attempt's shepherd to die (a zombie)")
    assert procs.proc_state(a.pid) == ("Z" if reap == "none" else None)
    taken = run_cli("run", job, "--lease", 60, "--heartbeat", 1)
    assert taken.returncode == 0, taken.stderr
    listing, state = latest(job)
    assert state["dbdict"]["status"] == "done" and state["dbdict"]["epoch"] == listing.claim_epoch == 2


def test_result_kept_when_the_experiment_process_is_slow_to_exit(tree):
    """The worker keeps heartbeating while it waits for the experiment's process to exit
    after its result: under a short lease a slow exit must not fence the result away."""
    job = create_jobs(tree, [{"linger": 2.5}], f"{procs.EXPERIMENTS}:lingering").created[0]
    proc = run_cli("run", job, "--lease", 3, "--heartbeat", 0.5)
    listing, state = latest(job)
    assert (proc.returncode, state["dbdict"]["status"]) == (0, "done"), proc.stderr
    assert state["result"] == "returned" and state["dbdict"]["epoch"] == listing.claim_epoch == 1


# ---------------------------------------------------------------- 5. no orphans

def test_no_orphan_after_kill9(tree, hosts):
    job = make_jobs(tree, [{"sleep": 60}], "sleeper")[0]
    a = hosts.add(["work", tree, "--lease", 60, "--heartbeat", 1], name="A")
    wait_for(lambda: child_pid(job), 60, what="the experiment to start")
    child = child_pid(job)
    shepherd = procs.proc_ppid(child)
    # via its shepherd, forked by the worker's zygote (work's default), itself the worker's child
    assert not pid_gone(child) and procs.proc_ppid(procs.proc_ppid(shepherd)) == a.pid
    assert procs.experiment_processes(tree) == [child]
    a.kill9()
    t0 = time.monotonic()
    wait_for(lambda: pid_gone(child), 5, interval=0.01, what="the experiment to die with its worker")
    assert time.monotonic() - t0 < 5
    assert not procs.experiment_processes(tree)


# ---------------------------------------------------------------- 6. protocol pieces, real files

def _racer(jobdir, rounds, barrier, results):
    token = booking.make_token(booking.Identity.current(), 30, 1, "race")
    for epoch in range(1, rounds + 1):
        barrier.wait()
        results.put((epoch, os.getpid(), booking.link_claim(jobdir, epoch, token)))


def race(target, job, n, rounds):
    """Run `target(job, rounds, barrier, results)` in n forked processes; (pids, results)."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    racers = [ctx.Process(target=target, args=(job, rounds, barrier, results)) for _ in range(n)]
    for p in racers:
        p.start()
    try:
        got = [results.get(timeout=60) for _ in range(n * rounds)]
    finally:
        for p in racers:
            p.join(30)
            if p.is_alive():
                p.kill()
    return {p.pid for p in racers}, got


def test_link_claim_race_between_processes_has_one_winner(tree):
    job = make_jobs(tree, [{"i": 0, "log": "/dev/null"}])[0]
    rounds = 25
    pids, got = race(_racer, job, 12, rounds)
    for epoch in range(1, rounds + 1):
        winners = [pid for e, pid, won in got if e == epoch and won]
        assert len(winners) == 1, (epoch, winners)
        assert jd.read_claim(job, epoch)["pid"] == winners[0]  # the claim is the winner's token
    assert {pid for _, pid, _ in got} == pids
    assert claim_epochs(job) == list(range(1, rounds + 1))
    assert not leftovers(job)


def _claimer(jobdir, rounds, barrier, results):
    for _ in range(rounds):
        barrier.wait()
        try:
            held = booking.claim(jobdir, lease=30, heartbeat=1, wait=False)
        except NotRunnable:
            held = None
        results.put((os.getpid(), held.epoch if held else None))
        barrier.wait()  # every racer has tried: only now may the winner make it ready again
        if held:
            state = held.state
            state["dbdict"]["status"] = "ready"
            held.write_state(state)
            jd.remove_older_states(jobdir, held.epoch)
        barrier.wait()


def test_claim_is_compare_and_swap_between_processes(tree):
    job = make_jobs(tree, [{"i": 0, "log": "/dev/null"}])[0]
    rounds = 15
    _, got = race(_claimer, job, 8, rounds)
    won = sorted(e for _, e in got if e is not None)
    assert won == list(range(1, rounds + 1)), won  # one winner a round, epochs without gaps
    listing, state = latest(job)
    assert sorted(listing.claim_epochs) == list(range(1, rounds + 1)) and state["dbdict"]["epoch"] == rounds


def _other_token(lease=30.0, host="elsewhere"):
    ident = booking.Identity(host, f"boot-of-{host}", booking.Identity.current().pidns)
    return ident, booking.make_token(ident, lease, lease / 10, "steal")


def test_beat_fences_when_a_newer_claim_appears(tree):
    job = make_jobs(tree, [{"i": 0, "log": "/dev/null"}])[0]
    held = booking.claim(job, lease=30, heartbeat=1)
    assert held.epoch == 1 and held.beat() is None
    state = dict(held.state)
    held.write_state(state)  # not fenced: writes state.1
    assert jd.list_job(job).state_epochs == [0, 1]
    _, token = _other_token()
    assert booking.link_claim(job, 2, token)
    reason = held.beat()
    assert reason and "claim.2" in reason and "elsewhere" in reason
    mtime = os.stat(claim_path(job, 1)).st_mtime_ns
    time.sleep(0.02)
    assert held.beat() == reason  # sticky, and a fenced holder no longer touches its claim
    assert os.stat(claim_path(job, 1)).st_mtime_ns == mtime
    before = open(os.path.join(job, "state.1.yaml")).read()
    state["late"] = True
    with pytest.raises(Fenced):
        held.write_state(state)
    assert open(os.path.join(job, "state.1.yaml")).read() == before


def test_write_state_checks_for_a_newer_claim_without_a_beat(tree):
    job = make_jobs(tree, [{"i": 0, "log": "/dev/null"}])[0]
    held = booking.claim(job, lease=30, heartbeat=1)
    _, token = _other_token()
    assert booking.link_claim(job, 2, token)
    with pytest.raises(Fenced):
        held.write_state(held.state)
    assert jd.list_job(job).state_epochs == [0]


def test_holder_fences_itself_when_its_heartbeat_is_older_than_half_the_lease(tree):
    job = make_jobs(tree, [{"i": 0, "log": "/dev/null"}])[0]
    lease = 0.5
    held = booking.claim(job, lease=lease, heartbeat=0.1)
    end = time.monotonic() + 3 * lease  # beating every 50 ms: never fenced, however long
    while time.monotonic() < end:
        assert held.beat() is None
        time.sleep(0.05)
    held.write_state(held.state)
    time.sleep(lease / 2 + 0.1)  # no heartbeat for more than L/2
    reason = held.fenced()
    assert reason and "half the lease" in reason
    mtime = os.stat(claim_path(job, 1)).st_mtime_ns
    assert held.beat() == reason  # a late beat must not revive the claim
    assert os.stat(claim_path(job, 1)).st_mtime_ns == mtime
    state = dict(held.state, late=True)
    with pytest.raises(Fenced):
        held.write_state(state)
    assert "late" not in latest(job)[1]


def test_observer_judges_staleness_only_by_watching_for_the_lease(tree):
    job = make_jobs(tree, [{"i": 0, "log": "/dev/null"}])[0]
    lease = 0.6
    _, token = _other_token(lease, host="hostA")
    assert booking.link_claim(job, 1, token)  # booked by hostA, which never beats
    path = claim_path(job, 1)
    # the claim looks ancient by the wall clock: that must not matter (no clock comparison)
    old = time.time() - 3600
    os.utime(path, (old, old))
    me = booking.Identity("hostB", "boot-of-hostB", booking.Identity.current().pidns)
    obs = booking.Observer(me)
    assert not obs.is_stale(job, 1)  # first sight
    assert not obs.is_stale(job, 1, wait=False)  # other host: no fast path, ever
    with pytest.raises(NotRunnable, match="booked by hostA"):
        booking.claim(job, identity=me, observer=obs, lease=lease, heartbeat=0.1)
    time.sleep(lease / 2)
    assert not obs.is_stale(job, 1)
    time.sleep(lease / 2 + 0.05)
    assert obs.is_stale(job, 1)  # unchanged for the lease

    os.utime(path)  # a heartbeat: observation starts again
    assert not obs.is_stale(job, 1)
    time.sleep(lease / 2)
    assert not obs.is_stale(job, 1)
    time.sleep(lease / 2 + 0.05)
    held = booking.claim(job, identity=me, observer=obs, lease=lease, heartbeat=0.1)
    assert held.epoch == 2 and held.token["host"] == "hostB"
    assert booking.Observer(me).is_stale(job, 2) is False  # a fresh observer starts from zero


def test_same_machine_fast_path_needs_a_dead_pid(tree):
    job = make_jobs(tree, [{"i": 0, "log": "/dev/null"}])[0]
    me = booking.Identity.current()
    obs = booking.Observer(me)
    live = booking.make_token(me, 30, 1, "run")  # our own pid: alive
    assert not obs.is_stale(job, 1, token=live, wait=False)
    reused = dict(live, start_ticks=live["start_ticks"] + 1)  # same pid, another process
    assert obs.is_stale(job, 1, token=reused, wait=False)
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid is gone
    dead_token = dict(live, pid=dead.pid, start_ticks=None)
    assert obs.is_stale(job, 1, token=dead_token, wait=False)
    elsewhere = dict(dead_token, boot_id="another-boot")  # a pid of another machine proves nothing
    assert not obs.is_stale(job, 1, token=elsewhere, wait=False)


# ---------------------------------------------------------------- 7. cancel while running

def test_cancel_stops_a_running_job_at_the_next_heartbeat(tree, hosts):
    lease, beat = 10.0, 0.5
    job = make_jobs(tree, [{"steps": 400, "step_time": 0.05}], "resumable")[0]
    a = hosts.add(["work", tree, "--lease", lease, "--heartbeat", beat, "--save-every", 0.3], name="A")
    wait_for(lambda: "progress" in latest(job)[1], 60, what="a saved checkpoint")
    a_child = child_pid_of(a.pid)
    proc = run_cli("cancel", tree)
    assert proc.returncode == 0, proc.stderr
    t_cancel = time.monotonic()
    _, state = latest(job)
    saved = state["progress"]
    assert state["dbdict"]["status"] == "canceled" and state["dbdict"]["epoch"] == 2
    assert jd.read_claim(job, 2)["purpose"] == "cancel"
    assert a.wait(30) == 0, a.output()
    assert time.monotonic() - t_cancel < beat + 10
    assert a_child is None or pid_gone(a_child)
    assert "no longer holds the job" in a.output() and "cancel" in a.output()
    listing, state = latest(job)
    assert listing.state_epochs == [2] and sorted(listing.claim_epochs) == [1, 2]
    assert state["dbdict"]["status"] == "canceled" and state["progress"] == saved  # nothing lost
    ckpt = int(open(os.path.join(job, "workdir", "ckpt")).read())
    assert ckpt >= saved  # the experiment's own checkpoint is kept too
    assert not procs.experiment_processes(tree)


def child_pid_of(pid):
    """A child process of `pid` (the experiment of a worker), or None."""
    for name in os.listdir("/proc"):
        if name.isdigit() and procs.proc_ppid(int(name)) == pid:
            return int(name)
    return None

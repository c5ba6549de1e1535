"""Booking, steals, fencing and chaos across two hosts with their own attribute caches: two
counting FUSE mounts of one directory (tests/fsim), each with a 1 s attribute and entry cache
(an NFS client's acregmax), workers on each, and L = 5 s > 4 x 1 s (DESIGN.md 4's rule).
Workers on mount A say they are host "a", those on B host "b" (the simulated-host seam), so no
same-host fast path applies across them."""

import os
import signal
import time

import pytest

import fsim
import procs
from conftest import experiment
from dbdict_fs import jobdir as jd
from dbdict_fs.create import create_jobs
from procs import read_log, wait_for
from test_chaos import run_chaos

REASON = fsim.available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"counting FUSE filesystem unavailable: {REASON}")

ACREGMAX = 1.0
LEASE, HEARTBEAT = 5.0, 0.5  # L > 4 x acregmax, H <= L/5


@pytest.fixture
def mounts(tmp_path):
    backing = tmp_path / "backing"
    backing.mkdir()
    with fsim.Host(str(backing), attr_timeout=ACREGMAX) as a, fsim.Host(str(backing), attr_timeout=ACREGMAX) as b:
        yield str(backing), a, b


@pytest.fixture
def hosts(tmp_path):
    with procs.Hosts(tmp_path / "procs") as h:
        yield h


def argv_for(mount, rel, *extra):
    return ["work", mount.path(rel), "--lease", LEASE, "--heartbeat", HEARTBEAT, "-q", *extra]


def latest(path):
    return jd.read_latest_state(path)


def test_exactly_once_with_workers_on_two_caching_hosts(mounts, hosts, tmp_path):
    backing, a, b = mounts
    log = str(tmp_path / "runs.log")
    tree = os.path.join(backing, "tree")
    paths = create_jobs(tree, [{"i": i, "log": log} for i in range(48)], experiment("append_log")).created
    workers = [hosts.add(argv_for(m, "tree"), host=name, barrier=True)
               for m, name in ((a, "a"), (b, "b"), (a, "a"), (b, "b"))]
    hosts.go()
    assert [w.wait(180) for w in workers] == [0] * 4, "\n".join(w.output() for w in workers)
    runs = read_log(log)
    assert sorted(runs) == list(range(48))
    assert {i: p for i, p in runs.items() if len(p) != 1} == {}  # nobody ran a job twice
    for i, path in enumerate(paths):
        listing, state = latest(path)
        assert state["dbdict"]["status"] == "done" and state["result"] == i
        assert listing.claim_epochs == [1], (path, listing.names)  # nobody died: nobody stole
    # both hosts took part
    assert {s["dbdict"]["host"] for s in (latest(p)[1] for p in paths)} == {"a", "b"}


def test_a_stopped_host_is_fenced_and_its_job_is_taken_over_by_the_other(mounts, hosts, tmp_path):
    """Host a's worker is stopped for 2 L in the middle of a job; host b's --wait worker sees
    the claim unchanged for L through its own cache, steals, runs and commits; on SIGCONT, a
    finds itself fenced and writes nothing the job shows."""
    backing, a, b = mounts
    tree = os.path.join(backing, "tree")
    [job] = create_jobs(tree, [{"sleep": 4}], experiment("sleeper")).created
    first = hosts.add(argv_for(a, "tree"), host="a")
    wait_for(lambda: latest(job)[1]["dbdict"]["status"] == "running", 60, what="host a to run the job")
    first.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    second = hosts.add(argv_for(b, "tree", "--wait"), host="b")
    wait_for(lambda: latest(job)[1]["dbdict"]["status"] == "done", 120, what="host b to finish the job")
    assert time.monotonic() - stopped_at >= LEASE  # not before the lease, seen from b
    listing, state = latest(job)
    assert state["dbdict"]["host"] == "b" and state["dbdict"]["epoch"] == 2 and state["result"] == "slept"
    claim1 = os.stat(os.path.join(job, "claim.1")).st_mtime_ns
    first.signal(signal.SIGCONT)
    first.wait(60)
    assert second.wait(60) == 0, second.output()
    listing, after = latest(job)
    assert after == state and listing.claim_epoch == 2  # the fenced attempt changed nothing
    # ... not even its own claim: a fenced holder never heartbeats again (fencing is sticky)
    assert os.stat(os.path.join(job, "claim.1")).st_mtime_ns == claim1
    assert os.readlink(os.path.join(job, "workdir")) == state["dbdict"]["workdir"]


def test_chaos_on_two_caching_hosts(mounts, hosts, tmp_path):
    """test_chaos's run (kill -9, pauses beyond the lease, whole-attempt suspends) with the
    workers taking turns between two caching mounts: every job ends done, its committed state
    is its own and under its top claim, and no workdir file came from a fenced attempt
    (bounded for CI: about 25 s of chaos)."""
    backing, a, b = mounts
    counts = run_chaos(os.path.join(backing, "tree"), hosts, tmp_path, n_workers=4, n_jobs=40, duration=25,
                       seed=20261203, finish_timeout=240, lease=LEASE, heartbeat=HEARTBEAT,
                       sides=[(a.path("tree"), "a"), (b.path("tree"), "b")])
    assert counts["kills"] >= 2 and counts["pauses"] >= 2, counts  # the chaos really happened

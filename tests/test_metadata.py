"""Metadata cost, counted on the counting FUSE filesystem (tests/fsim): a regression in the
number of operations a booking, a warm query or a waiting worker sends to the file server
fails here deterministically (counts, never times). DESIGN.md 4.1 and 6."""

import os

import pytest

import fsim
from dbdict_fs import booking
from dbdict_fs import jobdir as jd
from dbdict_fs.create import create_jobs
from dbdict_fs.errors import NotRunnable

from conftest import experiment

REASON = fsim.available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"counting FUSE filesystem unavailable: {REASON}")


@pytest.fixture
def backing(tmp_path):
    path = tmp_path / "backing"
    path.mkdir()
    return str(path)


@pytest.fixture
def host(backing):
    """One counting mount (one NFS client, 1 s attribute cache); always unmounted."""
    with fsim.Host(backing, attr_timeout=1.0) as h:
        yield h


@pytest.fixture
def two_hosts(backing):
    with fsim.Host(backing, attr_timeout=1.0) as a, fsim.Host(backing, attr_timeout=1.0) as b:
        yield a, b


def make_jobs(tree, n, **extra):
    return create_jobs(tree, [dict(i=i, **extra) for i in range(n)], experiment("append_log")).created


# ---------------------------------------------------------------- the filesystem itself

def test_counting_fs_counts_and_caches(two_hosts):
    a, b = two_hosts
    path = a.path("f")
    with open(path, "w") as f:
        f.write("x")
    a.reset()
    os.stat(path)
    os.stat(path)
    assert a.counts().get("getattr", 0) <= 1  # the second stat is answered by the attr cache
    assert b.ops() == 0
    os.stat(b.path("f"))
    assert b.counts().get("getattr", 0) >= 1  # another host has its own cache


def test_booking_core_across_two_hosts(two_hosts):
    a, b = two_hosts
    [job] = make_jobs(a.mnt, 1)
    job_b = b.path(os.path.relpath(job, a.mnt))
    held = booking.claim(job, lease=30, heartbeat=2)
    with pytest.raises(NotRunnable):
        booking.claim(job_b, lease=30, heartbeat=2, wait=False)
    state = held.state
    state["dbdict"]["status"] = "running"
    held.write_state(state)
    _, seen = jd.read_latest_state(job_b)
    assert seen["dbdict"]["epoch"] == held.epoch and seen["dbdict"]["status"] == "running"
    assert held.beat() is None

"""The index at scale, counted (DESIGN.md 4.1, 6; issue 13): a warm build spends one metadata
operation per unchanged job, processes of one node share one refresh, and a parallel cold
build gives exactly the serial build's table. Real processes and files; counts, never times.

What is counted on the counting filesystem (tests/fsim) is what an NFS server would see for a
directory listing: getattr + readdir. FUSE also reports opendir (and releasedir, which
fsim.TREE_OPS leaves out) for every listing; NFS has no such calls, so opendir is not counted.
"""

import json
import os
import subprocess
import sys
import time

import pytest

import fsim
from dbdict_fs import index as index_mod
from dbdict_fs import jobdir as jd
from dbdict_fs.create import create_jobs
from dbdict_fs.index import TRUST_SECONDS, build_index, cache_path, lock_dir, lock_path

from conftest import experiment
from procs import token_dead_here
from test_index import TOKEN, make_job, snapshot

FUSE = fsim.available()
needs_fuse = pytest.mark.skipif(FUSE is not None, reason=f"counting FUSE filesystem unavailable: {FUSE}")
needs_serialize = pytest.mark.skipif(not hasattr(__import__("sqlite3").Connection, "serialize"),
                                     reason="the index cache needs sqlite3 serialize (Python 3.11+)")


@pytest.fixture(autouse=True)
def local_dirs(tmp_path, monkeypatch):
    """A fresh index cache (a cold node) and node-lock directory per test, both off the tree."""
    monkeypatch.setenv("DBDICT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DBDICT_LOCK_DIR", str(tmp_path / "lock"))


@pytest.fixture
def backing(tmp_path):
    path = tmp_path / "backing"
    path.mkdir()
    return str(path)


def server_ops(counts):
    """Operations the file server sees: fsim's tree operations less FUSE's opendir."""
    return fsim.tree_ops(counts) - counts.get("opendir", 0)


def make_tree(root, n):
    """n jobs as `dbdict create` writes them (fan-out shards). Returns their paths."""
    return create_jobs(root, [dict(i=i, lr=0.1 * (i % 3)) for i in range(n)], experiment("append_log")).created


def stand_still(root):
    """Wait until every entry of the tree is older than the cache's trust window."""
    newest = max(os.lstat(os.path.join(top, n)).st_ctime for top, dirs, files in os.walk(root) for n in dirs + files)
    while time.time() < newest + TRUST_SECONDS + 0.1:  # a ctime cannot be backdated: wait it out
        time.sleep(0.1)


def shard_dirs(root):
    return sum(1 for name in os.listdir(root) if name[0] != "." and os.path.isdir(os.path.join(root, name)))


# ---------------------------------------------------------------- warm: 1 op per unchanged job

@needs_fuse
@needs_serialize
def test_a_warm_build_costs_one_operation_per_unchanged_job(backing):
    n = 300
    root = os.path.join(backing, "tree")
    make_tree(root, n)
    dirs = shard_dirs(root)
    with fsim.Host(backing, attr_timeout=1.0) as host:
        tree = host.path("tree")
        stand_still(root)
        assert build_index(tree).stats["read"] == n  # writes the cache
        host.drop_caches()  # a query later on: the client's attribute cache has expired
        host.reset()
        warm = build_index(tree)
        ops = server_ops(host.counts())
        assert warm.stats["read"] == 0 and warm.stats["reused"] == n
        # one lstat per job, plus one listing (getattr + readdir) per fan-out directory (at
        # most 256 whatever N) and the tree's root; the rest is a constant
        bound = n + 3 * (dirs + 1) + 10
        assert ops <= bound, f"{ops} operations for {n} unchanged jobs in {dirs} shards (bound {bound}): {host.counts()}"

        # two running jobs, held by a worker of another host: each costs its derived status
        for k in range(2):
            make_job(root, {"i": 1000 + k}, status="running", epoch=1, claims=[TOKEN])
        bound += 3 * (shard_dirs(root) - dirs)
        stand_still(root)
        build_index(tree)
        host.drop_caches()
        host.reset()
        warm = build_index(tree)
        live = server_ops(host.counts())
        assert warm.stats["read"] == 0 and warm.stats["reused"] == n + 2
        assert {r["dbdict.status"] for r in warm.filter_by(status="running")} == {"running"}
        assert len(warm.filter_by(status="running")) == 2
        # + O(1) per running job: its claim, read to derive its status (no other job opened)
        assert live <= bound + 2 + 2 * 8, f"{live} operations with 2 running jobs: {host.counts()}"
        print(f"\nwarm build: {ops} server ops for {n} unchanged jobs in {dirs} shards; "
              f"{live} with 2 of {n + 2} running")


# ---------------------------------------------------------------- one refresh per node

BUILD = r"""
import json, sys
from dbdict_fs.index import build_index
print("ready", flush=True)
index = build_index(sys.argv[1])
print(json.dumps({k: index.stats.get(k) for k in ("read", "reused", "shared", "cache")}), flush=True)
"""


def refresh_together(tree, workers, root=None, host=None):
    """`workers` processes that build the index of `tree` at once on a cold node. The test
    holds the node's lock until every one of them is about to take it, so they all start
    waiting before the first refresh begins. `root`: the tree's own path (not through the
    counting mount); `host`: its counts start when the lock is released. Returns each
    process's stats."""
    import filelock

    lock = filelock.FileLock(lock_path(cache_path(tree)))
    lock.acquire()
    procs = []
    try:
        for _ in range(workers):
            procs.append(subprocess.Popen([sys.executable, "-c", BUILD, tree], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(0.5)  # from "ready" to the lock is a few instructions
        # Fresh entries (this tick) are not trusted by a later cache: a process that walked
        # again instead of using the refresh it waited for would re-read every job.
        for top, dirs, _ in os.walk(root or tree):
            for name in dirs:
                if name != "workdir":
                    os.utime(os.path.join(top, name))
        if host is not None:
            host.reset()
    finally:
        lock.release()
    stats = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        stats.append(json.loads(out))
    return stats


@needs_fuse
@needs_serialize
def test_processes_of_one_node_share_one_refresh(backing):
    n, workers = 300, 8
    make_tree(os.path.join(backing, "tree"), n)
    with fsim.Host(backing, attr_timeout=1.0) as host:
        stats = refresh_together(host.path("tree"), workers, os.path.join(backing, "tree"), host)
        counts = host.counts()
    # every state file is opened once, by the one refresh; without sharing it would be 8n
    assert counts.get("open", 0) <= n + 8, f"{counts.get('open')} opens for {n} jobs, {workers} processes: {stats}"
    assert sum(s["read"] for s in stats) == n and sum(bool(s["shared"]) for s in stats) == workers - 1, stats
    print(f"\n{workers} processes, one cold node: {counts.get('open', 0)} opens for {n} jobs "
          f"({server_ops(counts)} server ops in all)")


@needs_serialize
def test_refreshes_share_without_fuse_too(tmp_path):
    """The same, judged by what each process says it read (where FUSE is missing)."""
    tree = str(tmp_path / "tree")
    make_tree(tree, 40)
    stats = refresh_together(tree, 4)
    assert sorted(s["read"] for s in stats) == [0, 0, 0, 40] and sum(bool(s["shared"]) for s in stats) == 3


@needs_serialize
def test_an_unusable_lock_dir_is_no_error(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    make_job(tree, {"x": 1})
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("DBDICT_LOCK_DIR", str(blocker / "locks"))
    assert len(build_index(str(tree))) == 1
    assert build_index(str(tree)).stats["cache"] == "hit"


def test_the_default_lock_dir_is_private_and_local(monkeypatch):
    monkeypatch.delenv("DBDICT_LOCK_DIR")
    path = lock_dir()
    assert path == f"/tmp/dbdict_fs-{os.getuid()}"
    st = os.lstat(path)
    assert st.st_uid == os.getuid() and st.st_mode & 0o777 == 0o700
    assert os.path.dirname(lock_path(cache_path("/some/tree"))) == path


# ---------------------------------------------------------------- parallel cold parse

needs_cpus = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: the parallel walk is never used")


def varied_tree(root):
    """Jobs of every kind the index shows: shards and a flat part, nested directories,
    corrupt files, running, booked and stale jobs, mixed types, NaN, case clashes."""
    jobs = []
    for i in range(60):
        config = {"i": i, "lr": [0.1, 0.01, "x", None][i % 4], "m": {"d": i % 5, "w": [i, "a"]}}
        if i % 7 == 0:
            config["nan"] = float("nan")
        status, epoch, claims = "done", 1, [TOKEN]
        if i % 9 == 0:
            status, epoch, claims = "running", 1, [TOKEN]
        elif i % 11 == 0:
            status, epoch, claims = "running", 1, [token_dead_here()]
        elif i % 13 == 0:
            status, epoch, claims = "ready", 0, [TOKEN]  # booked
        jobs.append(make_job(root, config, status=status, epoch=epoch, claims=claims, results={"v": i / 3}))
    deep = make_job(os.path.join(root, "deep", "er"), {"i": 100})
    flat = [make_job(os.path.join(root, f"flat{k}"), {"i": 200 + k}) for k in range(3)]
    for k, job in enumerate(jobs[1:6]):
        with open(os.path.join(job, "state.1.yaml"), "wb") as f:
            f.write([b"", b"\x00\xff", b"[1]", b'{"i": 1, "dbdict": {"status": "re', b"x: [unclosed\n"][k])
    make_job(root, {"a": 1, "A": 2})
    return jobs + [deep] + flat


def built(tree, min_jobs, monkeypatch, cache=False):
    monkeypatch.setenv("DBDICT_PARALLEL_MIN_JOBS", str(min_jobs))
    index = build_index(tree, cache=cache)
    return index, snapshot(index), index.corrupt


@needs_cpus
def test_a_parallel_cold_build_gives_the_serial_table(tmp_path, monkeypatch):
    tree = str(tmp_path / "tree")
    varied_tree(tree)
    serial, table, corrupt = built(tree, 10 ** 9, monkeypatch)
    parallel, table2, corrupt2 = built(tree, 1, monkeypatch)
    assert serial.stats["workers"] == 1 and parallel.stats["workers"] > 1
    assert table2 == table and corrupt2 == corrupt and len(corrupt) == 6
    assert {r["dbdict.status"] for r in serial.sql("SELECT * FROM jobs")} >= {"done", "running", "stale", "booked",
                                                                              "corrupt", "ready"}


@needs_cpus
@needs_serialize
def test_a_large_fresh_part_of_a_warm_refresh_is_read_in_parallel(tmp_path, monkeypatch):
    tree = str(tmp_path / "tree")
    jobs = varied_tree(tree)
    stand_still(tree)
    built(tree, 10 ** 9, monkeypatch, cache=True)  # the cache
    for job in jobs[20:40]:  # 20 jobs get a new state, as a worker writes it
        state = jd.read_latest_state(job)[1]
        epoch = state["dbdict"]["epoch"]
        state["v"] = "new"
        state["dbdict"]["epoch"] = epoch + 1
        with open(os.path.join(job, f"claim.{epoch + 1}"), "w") as f:
            json.dump(TOKEN, f)
        jd.write_state_file(job, epoch + 1, state)
    warm, table, corrupt = built(tree, 1, monkeypatch, cache=True)
    assert warm.stats["workers"] > 1 and warm.stats["read"] == 20 and warm.stats["reused"] == len(jobs) + 1 - 20
    cold, table2, corrupt2 = built(tree, 10 ** 9, monkeypatch)
    assert table == table2 and corrupt == corrupt2


@needs_cpus
def test_a_failing_child_falls_back_to_a_serial_read(tmp_path, monkeypatch):
    tree = str(tmp_path / "tree")
    varied_tree(tree)
    serial, table, corrupt = built(tree, 10 ** 9, monkeypatch)

    def broken(fd, result):  # runs in the forked child only
        raise MemoryError("a child that cannot send its rows")

    monkeypatch.setattr(index_mod, "_send", broken)
    parallel, table2, corrupt2 = built(tree, 1, monkeypatch)
    assert parallel.stats["workers"] == 1  # every child's share read again by the parent
    assert table2 == table and corrupt2 == corrupt


@needs_serialize
def test_a_waiter_uses_only_a_refresh_written_after_it_began_to_wait(tmp_path):
    """A holder that took the lock's flock itself (the uncontended path, no filelock import)
    blocks a waiter that waits with filelock; the waiter then uses a cache written while it
    waited, and walks itself when the cache is older than its wait."""
    tree = str(tmp_path / "tree")
    make_tree(tree, 20)
    elsewhere = dict(os.environ, DBDICT_LOCK_DIR=str(tmp_path / "other lock dir"))

    def waiter():
        proc = subprocess.Popen([sys.executable, "-c", BUILD, tree], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting for the lock
        return proc

    subprocess.run([sys.executable, "-c", BUILD, tree], check=True, env=elsewhere, capture_output=True)
    held = index_mod._NodeLock(cache_path(tree))
    held.acquire()
    assert held.fd is not None and held.waited_since is None
    try:
        stale = waiter()  # the cache is older than this wait: not used as is
    finally:
        held.release()
    assert json.loads(stale.communicate(timeout=60)[0])["shared"] is None

    held.acquire()
    try:
        proc = waiter()
        # a refresh on this node while it waits (not under this lock: another lock dir)
        subprocess.run([sys.executable, "-c", BUILD, tree], check=True, env=elsewhere, capture_output=True)
    finally:
        held.release()
    stats = json.loads(proc.communicate(timeout=60)[0])
    assert stats["shared"] is True and stats["read"] == 0

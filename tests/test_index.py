"""build_index and Index: real job directories in the design's format, no mocks."""

import hashlib
import json
import os
import sqlite3
import time

import pytest

from dbdict_fs import jobdir as jd
from dbdict_fs.errors import UsageError
from dbdict_fs.index import TRUST_SECONDS, build_index, cache_path

needs_serialize = pytest.mark.skipif(not hasattr(sqlite3.Connection, "serialize"),
                                     reason="the index cache needs sqlite3 serialize (Python 3.11+)")

from procs import token_dead_here


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test gets its own index cache directory, outside the tree."""
    path = tmp_path / "cache"
    monkeypatch.setenv("DBDICT_CACHE_DIR", str(path))
    return path


def make_job(tree, config, status="ready", epoch=0, claims=(), results=None, **book):
    """Write a job directory exactly as create (and a worker) would. Returns its path.

    claims: tokens (dicts) written as claim.1, claim.2, ...; state.<epoch>.yaml is the state.
    """
    experiment = "mypkg.train:main"
    digest = hashlib.sha256(json.dumps([config, experiment], sort_keys=True).encode()).hexdigest()[:12]
    job = os.path.join(str(tree), digest[:2], digest)
    os.makedirs(os.path.join(job, "workdir"))
    created = "2026-11-24T10:00:00Z"
    lines = ["dbdict:", f"  experiment: {experiment}", f"  hash: '{digest}'", f"  created: '{created}'"]
    lines += [f"{k}: {json.dumps(v)}" for k, v in config.items()]
    with open(os.path.join(job, "config.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    state = dict(config, **(results or {}))
    state["dbdict"] = dict(experiment=experiment, hash=digest, created=created, status=status, priority=1.0,
                           epoch=epoch, requeue_epoch=0, attempts=epoch, **book)
    for n, token in enumerate(claims, 1):
        with open(os.path.join(job, f"claim.{n}"), "w") as f:
            json.dump(token, f)
    jd.write_state_file(job, epoch, state)
    for name in ("stdout", "stderr"):
        open(os.path.join(job, name), "w").close()
    return job


def backdate(path, seconds):
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)


TOKEN = {"host": "node1", "pid": 1, "lease": 60, "heartbeat": 10}


def by_path(index):
    return {row["dbdict.path"]: row for row in index.sql("SELECT * FROM jobs")}


# ---------------------------------------------------------------- rows and columns

def test_rows_columns_nested_lists_and_missing_keys(tmp_path):
    tree = tmp_path / "tree"
    a = make_job(tree, {"lr": 0.1, "seed": 1, "model": {"arch": "resnet", "depth": 18}, "tags": ["a", 1]},
                 status="done", epoch=1, claims=[TOKEN], results={"valid_err": 0.25})
    b = make_job(tree, {"lr": 0.01, "seed": 2, "flag": True}, status="ready")
    index = build_index(str(tree))
    rows = by_path(index)
    assert set(rows) == {a, b}
    assert rows[a]["model.arch"] == "resnet" and rows[a]["model.depth"] == 18
    assert json.loads(rows[a]["tags"]) == ["a", 1]
    assert rows[a]["valid_err"] == 0.25 and rows[a]["dbdict.status"] == "done"
    assert rows[b]["valid_err"] is None and rows[b]["model.arch"] is None and rows[b]["flag"] == 1
    assert rows[a]["dbdict.hash"] == os.path.basename(a) and rows[a]["dbdict.experiment"] == "mypkg.train:main"
    types = {r[1]: r[2] for r in index.conn.execute("PRAGMA table_info(jobs)")}
    assert types["lr"] == "REAL" and types["seed"] == "INTEGER" and types["model.arch"] == "TEXT"
    assert index.columns.index("lr") < index.columns.index("dbdict.status")  # user keys first
    assert index.corrupt == []


def test_path_keeps_the_tree_as_given(tmp_path, monkeypatch):
    make_job(tmp_path / "tree", {"x": 1})
    monkeypatch.chdir(tmp_path)
    (row,) = build_index("tree").sql("SELECT * FROM jobs")
    assert row["dbdict.path"].startswith(os.path.join("tree", ""))
    assert os.path.isfile(os.path.join(row["dbdict.path"], "config.yaml"))


def test_walk_skips_dot_dirs_symlinks_and_never_descends_into_jobs(tmp_path):
    tree = tmp_path / "tree"
    job = make_job(tree / "deep" / "er", {"x": 1})
    os.makedirs(os.path.join(job, "workdir", "nested"))
    with open(os.path.join(job, "workdir", "nested", "config.yaml"), "w") as f:
        f.write("not: a job\n")  # inside a job: never indexed
    make_job(tree / ".dbdict", {"x": 2})
    os.symlink(str(tree / "deep"), str(tree / "link"))
    assert [r["dbdict.path"] for r in build_index(str(tree)).sql("SELECT * FROM jobs")] == [job]


def test_a_tree_that_is_one_job(tmp_path):
    job = make_job(tmp_path, {"x": 1})
    (row,) = build_index(job).sql("SELECT * FROM jobs")
    assert row["x"] == 1 and row["dbdict.path"] == job


def test_not_a_directory(tmp_path):
    with pytest.raises(UsageError, match="no such directory"):
        build_index(str(tmp_path / "missing"))


def test_mixed_types_keep_their_own_type(tmp_path):
    tree = tmp_path / "tree"
    make_job(tree, {"v": 1})
    make_job(tree, {"v": 0.5})
    make_job(tree, {"v": "3"})
    index = build_index(str(tree))
    values = sorted((type(r["v"]).__name__, r["v"]) for r in index.sql("SELECT v FROM jobs"))
    assert values == [("float", 0.5), ("int", 1), ("str", "3")]


def test_keys_differing_only_in_case(tmp_path):
    tree = tmp_path / "tree"
    make_job(tree, {"lr": 1})
    make_job(tree, {"LR": 2})
    bad = make_job(tree, {"a": 1, "A": 2})
    index = build_index(str(tree))
    assert sorted(r["LR"] for r in index.sql("SELECT LR FROM jobs WHERE LR IS NOT NULL")) == [1, 2]
    assert [p for p, _ in index.corrupt] == [bad]


# ---------------------------------------------------------------- corrupt jobs

CORRUPTIONS = {
    "truncated": b'{"lr": 0.1, "dbdict": {"status": "re',
    "binary": b"\x00\x01\xff\xfe garbage",
    "empty": b"",
    "a list": b"[1, 2, 3]",
    "wrong types": None,  # filled in below: epoch is a string
    "bad status": None,
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_corrupt_job_never_stops_the_index(tmp_path, kind):
    tree = tmp_path / "tree"
    good = make_job(tree, {"x": 1})
    bad = make_job(tree, {"x": 2})
    state_file = os.path.join(bad, "state.0.yaml")
    data = CORRUPTIONS[kind]
    if data is None:
        state = json.load(open(state_file))
        if kind == "wrong types":
            state["dbdict"]["epoch"] = "zero"
        else:
            state["dbdict"]["status"] = "exploded"
        data = json.dumps(state).encode()
    with open(state_file, "wb") as f:
        f.write(data)
    index = build_index(str(tree))
    rows = by_path(index)
    assert rows[good]["dbdict.status"] == "ready"
    assert rows[bad]["dbdict.status"] == "corrupt"
    assert rows[bad]["x"] == 2  # the config's keys are still shown
    (corrupt,) = index.corrupt
    assert corrupt[0] == bad and corrupt[1] == rows[bad]["dbdict.error"] and corrupt[1]


def test_a_job_without_state_or_with_a_yaml_state(tmp_path):
    tree = tmp_path / "tree"
    none = make_job(tree, {"x": 1})
    os.unlink(os.path.join(none, "state.0.yaml"))
    edited = make_job(tree, {"x": 2})
    with open(os.path.join(edited, "state.0.yaml"), "w") as f:  # a person's YAML edit is fine
        f.write("x: 3\ndbdict: {experiment: 'm:f', hash: h, status: done, priority: 1.0, epoch: 0,\n"
                "  requeue_epoch: 0, attempts: 0}\n")
    rows = by_path(build_index(str(tree)))
    assert rows[none]["dbdict.status"] == "corrupt" and "no state" in rows[none]["dbdict.error"]
    assert rows[edited]["x"] == 3 and rows[edited]["dbdict.status"] == "done"


# ---------------------------------------------------------------- derived statuses

def test_booked_stale_and_running(tmp_path):
    tree = tmp_path / "tree"
    running = make_job(tree, {"x": 1}, status="running", epoch=1, claims=[TOKEN])
    stale = make_job(tree, {"x": 2}, status="running", epoch=1, claims=[token_dead_here()])
    booked = make_job(tree, {"x": 3}, claims=[TOKEN])
    booked_stale = make_job(tree, {"x": 4}, claims=[token_dead_here()])
    # another host, heartbeat far older than its lease: booking cannot prove it dead from
    # here without watching (no clock is compared across hosts): still running (DESIGN 4)
    old = make_job(tree, {"x": 5}, status="running", epoch=1, claims=[TOKEN])
    backdate(os.path.join(old, "claim.1"), 3600)
    alive_here = make_job(tree, {"x": 6}, status="running", epoch=1,
                          claims=[token_dead_here(pid=os.getpid(), start_ticks=None)])
    rows = by_path(build_index(str(tree), cache=False))
    assert {p: r["dbdict.status"] for p, r in rows.items()} == {
        running: "running", stale: "stale", booked: "booked", booked_stale: "stale", old: "running",
        alive_here: "running"}



def test_scheduler_gone_judges_the_holder_by_its_claims_token(tmp_path, monkeypatch):
    """DESIGN 4's scheduler-gone fast path, asked by booking once per build (cold or warm):
    a held job whose top claim's token names a task squeue no longer lists is stale, whatever
    task its state names (that is the attempt that wrote the state, not the holder)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/calls"\necho "5_0 RUNNING"\n')
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    tree = tmp_path / "tree"
    alive, dead = dict(TOKEN, cluster_job="5_0"), dict(TOKEN, cluster_job="9_0")
    running = make_job(tree, {"x": 1}, status="running", epoch=1, claims=[alive], cluster_job="5_0")
    gone = make_job(tree, {"x": 2}, status="running", epoch=1, claims=[dead], cluster_job="9_0")
    # booked by a live task after an attempt of a task now gone: its holder is alive
    rebooked = make_job(tree, {"x": 3}, epoch=1, claims=[dead, alive], cluster_job="9_0")
    # booked by a task now gone before it wrote a state: only its token names the task
    booked_gone = make_job(tree, {"x": 4}, claims=[dead])
    done = make_job(tree, {"x": 5}, status="done", epoch=1, claims=[dead], cluster_job="9_0")
    want = {running: "running", gone: "stale", rebooked: "booked", booked_gone: "stale", done: "done"}
    assert {p: r["dbdict.status"] for p, r in by_path(build_index(str(tree), cache=True)).items()} == want
    time.sleep(TRUST_SECONDS + 0.1)
    for reused in (0, 5):  # read again (now trusted), then every row from the cache
        index = build_index(str(tree), cache=True)
        assert index.stats["reused"] == reused
        assert {p: r["dbdict.status"] for p, r in by_path(index).items()} == want
    calls = (bin_dir / "calls").read_text().splitlines()
    assert len(calls) == 3 and all(c.split()[2] == "5_0,9_0" for c in calls), calls  # one per build


# ---------------------------------------------------------------- the cache

def snapshot(index):
    return index.columns, index.sql("SELECT * FROM jobs ORDER BY rowid")


@needs_serialize
def test_cache_lives_outside_the_tree_and_matches_a_cold_build(tmp_path, cache_dir):
    tree = tmp_path / "tree"
    for i in range(20):
        make_job(tree, {"lr": i / 10, "i": i, "m": {"a": "x" * i}}, status="done" if i % 2 else "ready",
                 epoch=1 if i % 2 else 0, claims=[TOKEN] if i % 2 else (), results={"v": i} if i % 3 else None)
    before = sorted(os.path.join(d, f) for d, _, fs in os.walk(tree) for f in fs)
    first = build_index(str(tree))
    assert first.stats["cache"] == "miss" and os.path.isfile(cache_path(str(tree)))
    assert str(cache_dir) in cache_path(str(tree))
    second = build_index(str(tree))
    assert second.stats["cache"] == "hit"
    assert snapshot(second) == snapshot(first) == snapshot(build_index(str(tree), cache=False))
    assert sorted(os.path.join(d, f) for d, _, fs in os.walk(tree) for f in fs) == before


@needs_serialize
def test_cache_skips_unchanged_jobs_and_sees_every_change(tmp_path):
    tree = tmp_path / "tree"
    jobs = [make_job(tree, {"i": i}, status="done", epoch=1, claims=[TOKEN], results={"v": i}) for i in range(6)]
    running = make_job(tree, {"i": 99}, status="running", epoch=1, claims=[TOKEN])
    time.sleep(2.2)  # older than TRUST_SECONDS: these entries may be trusted
    build_index(str(tree))
    again = build_index(str(tree))
    assert again.stats["reused"] == 7 and again.stats["read"] == 0
    assert by_path(again)[running]["dbdict.status"] == "running"

    # its holder dies (same host, pid gone): the cached running job turns stale, unread
    with open(os.path.join(running, "claim.1"), "w") as f:
        json.dump(token_dead_here(), f)
    index = build_index(str(tree))
    assert index.stats["read"] == 0 and by_path(index)[running]["dbdict.status"] == "stale"

    # a new state written as the tool writes it
    state = jd.read_latest_state(jobs[0])[1]
    state["v"] = "new"
    state["extra"] = [1, 2]
    state["dbdict"]["epoch"] = 2
    with open(os.path.join(jobs[0], "claim.2"), "w") as f:
        json.dump(TOKEN, f)
    jd.write_state_file(jobs[0], 2, state)
    # a person's in-place edit that leaves the directory untouched: the directory key is
    # all a warm build looks at (one lstat per job), so only --no-cache sees it (build_index)
    path = os.path.join(jobs[1], "state.1.yaml")
    edited = json.load(open(path))
    edited["v"] = 1000
    with open(path, "r+") as f:
        f.seek(0)
        f.write(json.dumps(edited, indent=3))
        f.truncate()
    # a removed job and a new one
    import shutil

    shutil.rmtree(jobs[2])
    added = make_job(tree, {"i": 100})
    index = build_index(str(tree))
    rows = by_path(index)
    assert rows[jobs[0]]["v"] == "new" and rows[jobs[0]]["extra"] == "[1,2]"
    assert rows[jobs[1]]["v"] == 1  # the in-place edit: not seen through the cache ...
    assert jobs[2] not in rows and rows[added]["dbdict.status"] == "ready"
    assert index.stats["read"] == 2 and index.stats["reused"] == 5
    cold = build_index(str(tree), cache=False)
    assert by_path(cold)[jobs[1]]["v"] == 1000  # ... only with --no-cache
    assert [r for r in snapshot(index)[1] if r["dbdict.path"] != jobs[1]] == \
        [r for r in snapshot(cold)[1] if r["dbdict.path"] != jobs[1]]
    # ... or once the directory changes (here a new claim, as any booking makes)
    with open(os.path.join(jobs[1], "claim.2"), "w") as f:
        json.dump(token_dead_here(), f)
    assert by_path(build_index(str(tree)))[jobs[1]]["v"] == 1000


def test_fresh_entries_are_not_trusted_within_a_timestamp_tick(tmp_path):
    """A coarse filesystem may not move a directory's mtime for a change made in the same
    tick: entries modified just before they were read are re-read next time. The job's
    directory keeps the key the first build saw (inode, mtime, ctime: nothing here touches
    the directory after that build), so only the trust window can make the second build
    read the changed state."""
    tree = tmp_path / "tree"
    job = make_job(tree, {"i": 1}, results={"v": 1})
    state_file = os.path.join(job, "state.0.yaml")
    # Modified just before the first build reads it, however slow this machine is: the
    # directory's mtime a minute ahead (set before that build keys the directory).
    ahead = time.time_ns() + 60 * 10 ** 9
    os.utime(job, ns=(ahead, ahead))
    st_dir, st_file = os.stat(job), os.stat(state_file)
    assert build_index(str(tree)).sql("SELECT v FROM jobs") == [{"v": 1}]
    state = json.load(open(state_file))
    state["v"] = 2
    data = json.dumps(state).encode()
    with open(state_file, "r+b") as f:  # same size, same mtimes: as if within one tick
        f.write(data.ljust(st_file.st_size))
        f.truncate(st_file.st_size)
    os.utime(state_file, ns=(st_file.st_atime_ns, st_file.st_mtime_ns))
    st = os.stat(job)
    assert (st.st_ino, st.st_mtime_ns, st.st_ctime_ns) == (st_dir.st_ino, st_dir.st_mtime_ns, st_dir.st_ctime_ns)
    index = build_index(str(tree))
    assert index.stats["read"] == 1 and index.sql("SELECT v FROM jobs") == [{"v": 2}]


@needs_serialize
def test_a_broken_cache_file_is_ignored(tmp_path):
    tree = tmp_path / "tree"
    make_job(tree, {"i": 1})
    build_index(str(tree))
    with open(cache_path(str(tree)), "r+b") as f:
        f.seek(30)
        f.write(b"\xff" * 40)
    index = build_index(str(tree))
    assert index.stats["cache"] == "miss" and len(index) == 1


def test_five_thousand_jobs(tmp_path):
    tree = tmp_path / "tree"
    state = {"lr": 0.1, "model": {"arch": "mlp"}, "dbdict": {"experiment": "m:f", "hash": "", "created": "",
             "status": "done", "priority": 1.0, "epoch": 0, "requeue_epoch": 0, "attempts": 0}}
    for i in range(5000):
        job = tree / f"{i % 50:02d}" / f"job{i}"
        os.makedirs(job)
        (job / "config.yaml").write_text("dbdict: {experiment: 'm:f'}\n")
        state["seed"] = i
        (job / "state.0.yaml").write_bytes(jd.dump_state(state))
    index = build_index(str(tree), cache=False)
    assert len(index) == 5000 and index.filter_by(seed=4321)[0]["dbdict.path"].endswith("job4321")
    # Files older than the cache's trust window, so the count below does not depend on how
    # fast this machine wrote them (a timed version of this test failed under load).
    newest = max(os.lstat(os.path.join(top, n)).st_ctime for top, dirs, files in os.walk(tree) for n in files + dirs)
    while time.time() < newest + TRUST_SECONDS + 0.1:  # the ctime cannot be backdated: wait it out
        time.sleep(0.1)
    first = build_index(str(tree))
    warm = build_index(str(tree))
    assert first.stats["cache"] == "miss" and warm.stats["cache"] == "hit"
    assert len(warm) == 5000 and warm.stats["read"] == 0 and warm.stats["reused"] == 5000  # counted, not timed


# ---------------------------------------------------------------- the Python API

@pytest.fixture
def small(tmp_path):
    tree = tmp_path / "tree"
    for i, (lr, arch, err) in enumerate([(0.1, "resnet", 0.3), (0.01, "resnet", 0.1), (0.01, "mlp", None)]):
        make_job(tree, {"lr": lr, "i": i, "model": {"arch": arch}}, status="done" if err else "ready",
                 epoch=1 if err else 0, claims=[TOKEN] if err else (), results={"valid_err": err} if err else None)
    return build_index(str(tree))


def test_filter_by_where_and_ordering(small):
    assert [r["i"] for r in small.filter_by(lr=0.01, **{"model.arch": "resnet"})] == [1]
    assert [r["i"] for r in small.filter_by(model={"arch": "mlp"})] == [2]
    assert [r["i"] for r in small.filter_by(status="ready")] == [2]
    assert [r["i"] for r in small.filter_by(valid_err=None)] == [2]
    assert {r["i"] for r in small.where('lr > 0.01 or model.arch == "mlp"')} == {0, 2}
    assert [r["i"] for r in small.all_ordered_by("valid_err")] == [1, 0, 2]  # NULLs last
    assert [r["i"] for r in small.all_ordered_by("-valid_err")] == [0, 1, 2]
    assert small.sql('SELECT count(*) AS n FROM jobs WHERE "model.arch" = ?', ("resnet",)) == [{"n": 2}]
    with pytest.raises(UsageError, match="did you mean lr"):
        small.filter_by(lrr=1)


def test_save_and_pandas(small, tmp_path):
    path = small.save(str(tmp_path / "index.db"))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 3
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="pandas"):
            small.to_pandas()
    else:
        assert len(small.to_pandas()) == 3

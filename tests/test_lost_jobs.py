"""Jobs that workers never find, and queries that block or answer stale (issue 23, items 1-4
and 11-13), each with real processes over real files, caught at an exact step where a race
needs one: `strace -P <one path>` stops a process at one system call on one file
(`inject=...:signal=SIGSTOP`, with `error=EINTR` when the call must not happen yet: Python
makes it again once the process is continued), or kills it there (`signal=SIGKILL`).
The tests wait for conditions (strace's "stopped by SIGSTOP" line, a seam's marker), never
for fixed times.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from dbdict_fs import jobdir as jd
from dbdict_fs.create import create_jobs
from dbdict_fs.discovery import mark_path

from conftest import experiment, read_state, run_cli, wait_for
from procs import proc_state

HERE = os.path.dirname(os.path.abspath(__file__))
GAP = os.path.join(HERE, "experiments", "gap_exps.py")
CLI = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]
SHORT = ["--lease", "3", "--heartbeat", "0.5"]
SEAM = "DBDICT_TEST_STOP_BEFORE_RENAME"


@pytest.fixture(autouse=True)
def strace_required():
    if shutil.which("strace") is None:
        pytest.fail("strace is missing: apt-get install strace (.ci/run installs it)")


@pytest.fixture
def node(tmp_path, monkeypatch):
    """One node of its own: index cache and refresh locks in this test's directory."""
    env = {"DBDICT_CACHE_DIR": str(tmp_path / "node cache"), "DBDICT_LOCK_DIR": str(tmp_path / "node locks")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def env_for(host=None, seam=None, **extra):
    env = dict(os.environ, **extra)
    env.pop(SEAM, None)
    if host:
        env["DBDICT_HOST"] = host
    if seam:
        env[SEAM] = seam
    return env


def executions(log):
    return len(open(log).read().splitlines()) if os.path.exists(log) else 0


def status(job):
    return read_state(job)["dbdict"]["status"]


def traced(args, path, calls, inject, log, env=None):
    """`dbdict ARGS` under strace: `inject` (if any) on `calls` that name `path` only."""
    injecting = ["-e", f"inject={calls}:{inject}"] if inject else []
    return subprocess.Popen(["strace", "-f", "-qq", "-o", str(log), "-P", str(path), "-e", f"trace={calls}"]
                            + injecting + CLI + [str(a) for a in args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stopped_in(log, proc):
    """Wait until the traced command stopped itself at its call; its pid."""
    wait_for(lambda: os.path.exists(log) and "stopped by SIGSTOP" in open(log).read(), timeout=90,
             what="the traced call", detail=lambda: f"exit {proc.poll()}")
    with open(log) as f:
        return int(f.read().split("stopped by SIGSTOP")[0].splitlines()[-1].split()[0])


def seam_stop(marker, proc):
    """Wait until `proc` wrote `marker` at a jobdir seam and stopped itself there; its pid."""
    pid = int(wait_for(lambda: os.path.exists(marker) and open(marker).read(), timeout=90,
                       what=f"the seam {os.path.basename(marker)}", detail=lambda: f"exit {proc.poll()}"))
    wait_for(lambda: proc_state(pid) == "T", timeout=30, what="the process to stop itself")
    return pid


def ended(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


# ---------------------------------------------------------------- 1. the tree a person names

def test_a_tree_named_through_a_symlink_or_a_relative_path_is_worked(tree, tmp_path):
    """`ln -s $PWD/tree link; dbdict work link` ran nothing: the walk opened its root with
    O_NOFOLLOW. Every command resolves the tree it is given once (DESIGN 1, rev 4)."""
    log = tmp_path / "log"
    create_jobs(str(tree), [dict(i=i, log=str(log)) for i in range(2)], experiment("append_log"))
    os.symlink(tree, tmp_path / "link")
    proc = run_cli("work", tmp_path / "link")
    assert proc.returncode == 0 and executions(log) == 2, proc.stderr
    proc = run_cli("status", "link/", "--format", "json", cwd=tmp_path)
    assert json.loads(proc.stdout)["counts"] == {"done": 2}, proc.stderr
    proc = run_cli("requeue", "./link/", "--force", cwd=tmp_path)
    assert proc.returncode == 0 and "requeued 2 of 2" in proc.stderr, proc.stderr
    proc = run_cli("work", "link/", cwd=tmp_path)  # after a walk marked the finished sweep final
    assert proc.returncode == 0 and executions(log) == 4, proc.stderr
    proc = run_cli("create", "link", "-e", experiment("append_log"), "i=7", f"log={log}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("query", "link", "i=7", "--format", "json", cwd=tmp_path)
    [row] = json.loads(proc.stdout)
    assert row["dbdict.status"] == "ready" and row["dbdict.path"].startswith(os.path.realpath(tree) + os.sep)
    proc = run_cli("work", "link", "--where", "i == 7", cwd=tmp_path)
    assert proc.returncode == 0 and executions(log) == 5, proc.stderr
    proc = run_cli("requeue", "link", "--force", "i=7", cwd=tmp_path)
    assert proc.returncode == 0 and "requeued 1 of 1" in proc.stderr, proc.stderr
    proc = run_cli("cancel", "link", cwd=tmp_path)
    assert proc.returncode == 0 and "canceled 1 of" in proc.stderr, proc.stderr
    proc = run_cli("submit", "link", "--slurm", "--workers", "1", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"TREE={os.path.realpath(tree)}" in proc.stdout.replace("'", "").replace('"', ""), proc.stdout


# ---------------------------------------------------------------- 2. one decision of a job's tree

@pytest.mark.parametrize("case", ["deep", "requeue names the outer tree", "requeue names the inner tree"])
def test_a_requeued_job_of_a_deep_or_nested_tree_is_found(tree, tmp_path, case):
    """Live markers stopped at the nearest `.dbdict/` within eight levels, while the walk
    marked directories final up to its own root: a job more than eight directories deep, or
    in a tree inside the worked tree, stayed hidden after a requeue."""
    log = tmp_path / "log"
    exp = experiment("append_log")
    if case == "deep":
        create_jobs(str(tree), [dict(i=1, log=str(log))], exp, name="a/b/c/d/e/f/g/h/i/j/k{i}")
        requeued = tree
    else:
        create_jobs(str(tree), [dict(i=1, log=str(log))], exp, name="top/j{i}")
        create_jobs(str(tree / "inner"), [dict(i=2, log=str(log))], exp, name="sub/j{i}")
        requeued = tree if case == "requeue names the outer tree" else tree / "inner"
    proc = run_cli("work", tree)
    runs = executions(log)
    assert proc.returncode == 0 and runs >= 1, proc.stderr
    proc = run_cli("requeue", requeued, "--force")
    assert proc.returncode == 0 and "requeued" in proc.stderr, proc.stderr
    proc = run_cli("work", tree)
    again = 1 if requeued != tree else runs  # the inner tree holds one job
    assert proc.returncode == 0 and executions(log) == runs + again, (
        f"requeued jobs were not run again: {proc.stderr.strip()!r}; top-level marks "
        f"{sorted(n for n in os.listdir(tree) if n.startswith(('.final.', '.live.')))}")


# ---------------------------------------------------------------- 3. create ended by a signal

def test_a_create_killed_by_a_signal_leaves_no_new_job_hidden(tree, tmp_path):
    """`create` adding jobs to a finished sweep, killed (SIGKILL: no `finally` runs) as it
    places its second new job: the first one is in a directory a walk had marked final, so
    the markers that make it looked at must exist before the job does."""
    log = tmp_path / "log"
    exp = experiment("append_log")
    create_jobs(str(tree), [dict(i=1, log=str(log))], exp, name="g/j{i}")
    assert run_cli("work", tree).returncode == 0 and executions(log) == 1
    assert os.path.exists(mark_path(tree / "g"))  # the walk marked the finished directory
    third = tree / "g" / "j3"
    # Killed at its look for g/j3 (whether it exists), after g/j2 is in place.
    proc = traced(["create", tree, "-e", exp, "i={2,3}", f"log={log}", "--name", "g/j{i}"], third,
                  "newfstatat,statx", "signal=SIGKILL:error=ENOENT:when=1", tmp_path / "create.strace")
    ended(proc)
    assert os.path.isdir(tree / "g" / "j2") and not os.path.exists(third)
    assert "killed by SIGKILL" in open(tmp_path / "create.strace").read()
    proc = run_cli("work", tree)
    assert proc.returncode == 0 and executions(log) == 2, (
        f"the created job g/j2 was not run: {proc.stderr.strip()!r}")


# ---------------------------------------------------------------- 4. a listing older than the state

def test_a_walk_never_marks_a_job_final_from_a_listing_older_than_the_state(tree, tmp_path):
    """1. holder H1 (host a) finishes and stops just before renaming its `done` state.1;
    2. walker W lists the job (claim.1, state.1 running) and is stopped before its open of
       state.1;
    3. B (host b) waits out H1's lease, steals (claim.2, reads state.1 `running`) and stops
       before writing state.2;
    4. H1 resumes: its late `done` lands in state.1 (no newer state hides it yet);
    5. W resumes, reads state.1 `done`, sees no claim above it in its old listing, and
       marked the job final;
    6. B writes state.2 `running` and is killed: the job is running@2, stale, and every
       later walk skipped it."""
    [job] = create_jobs(str(tree), [dict(x=1)], f"{GAP}:quick").created
    procs = []
    try:
        h1 = subprocess.Popen(CLI + ["run", job, *SHORT], env=env_for("host-a", f"state:done:{tmp_path / 'h1'}"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(h1)
        seam_stop(tmp_path / "h1", h1)
        w = traced(["work", tree, *SHORT], os.path.join(job, "state.1.yaml"), "openat",
                   "error=EINTR:signal=SIGSTOP:when=1", tmp_path / "w.strace", env_for("host-w"))
        procs.append(w)
        w_pid = stopped_in(tmp_path / "w.strace", w)
        b = subprocess.Popen(CLI + ["work", tree, "--wait", "--lease", "60", "--heartbeat", "2"],
                             env=env_for("host-b", f"write:running:{tmp_path / 'b1'},link:running:{tmp_path / 'b2'}"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(b)
        b_pid = seam_stop(tmp_path / "b1", b)
        assert jd.list_job(job).claim_epoch == 2
        os.kill(h1.pid, signal.SIGCONT)
        ended(h1)
        assert jd.read_state_file(os.path.join(job, "state.1.yaml"), 1)["dbdict"]["status"] == "done"
        os.kill(w_pid, signal.SIGCONT)
        code, _, err = ended(w)
        assert code == 0, err
        os.kill(b_pid, signal.SIGCONT)
        os.kill(seam_stop(tmp_path / "b2", b), signal.SIGKILL)
        ended(b)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    book = read_state(job)["dbdict"]
    assert (book["status"], book["epoch"]) == ("running", 2)
    # B's host: its dead pid makes claim.2 stale at once (the same-host fast path) instead of
    # after B's 60 s lease; a job marked final would be skipped by this walk all the same.
    proc = subprocess.run(CLI + ["work", str(tree), "--wait", *SHORT], env=env_for("host-b"),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and status(job) == "done", (
        f"the stale job was not taken over: {proc.stderr.strip()!r}; marked: {os.path.exists(mark_path(job))}")


def test_a_walk_keeps_the_live_marker_of_a_newer_requeue(tree, tmp_path):
    """(A mutant the suite let live: a walk that removed every live marker of a final job.)
    g/j1 is done (g marked final) and g/j2 created since (ready). A requeue of j1 made
    `.live.j1.2` and is stopped there, before the markers of the directories above; a walk
    reads j1 `done` at epoch 1 and must leave that marker alone: had it removed it, its
    next pass (j2 run) finds g all final and removes g's markers, and once the requeue
    has written `ready`, no walk ever looks at j1 again."""
    log = tmp_path / "log"
    exp = experiment("append_log")
    [job] = create_jobs(str(tree), [dict(i=1, log=str(log))], exp, name="g/j{i}").created
    assert run_cli("work", tree).returncode == 0 and executions(log) == 1
    assert os.path.exists(mark_path(tree / "g"))
    create_jobs(str(tree), [dict(i=2, log=str(log))], exp, name="g/j{i}")
    live = os.path.join(os.path.dirname(job), f".live.{os.path.basename(job)}.2")
    requeue = traced(["requeue", tree, "--force"], live, "openat", "signal=SIGSTOP:when=1",
                     tmp_path / "requeue.strace")
    try:
        pid = stopped_in(tmp_path / "requeue.strace", requeue)
        assert os.path.exists(live)
        proc = run_cli("work", tree)  # walks while the requeue is stopped: runs j2
        assert proc.returncode == 0 and executions(log) == 2, proc.stderr
        assert os.path.exists(live) and status(job) == "done"
        os.kill(pid, signal.SIGCONT)
        code, _, err = ended(requeue)
        assert code == 0, err
    finally:
        if requeue.poll() is None:
            requeue.kill()
            requeue.wait()
    assert status(job) == "ready"
    proc = run_cli("work", tree)
    assert proc.returncode == 0 and executions(log) == 3, proc.stderr



def test_a_walk_marking_a_directory_keeps_a_newer_requeues_marker_of_it(tree, tmp_path):
    """(A mutant the suite let live: a walk that, marking a directory final, removed every
    live marker of it, not only those its listing showed before it listed the directory.)
    g/j1 is done and g/j2 created since. The worker W runs j2, finds g all final, and is
    stopped at its open of `.final.g`; a requeue of j1 then makes `g/.live.j1.2` and
    `.live.g.<token>` and writes `ready`. W marks g and must leave the requeue's marker of
    g alone: without it, every walk skips g and j1, ready, is never run."""
    log = tmp_path / "log"
    exp = experiment("append_log")
    [job] = create_jobs(str(tree), [dict(i=1, log=str(log))], exp, name="g/j{i}").created
    assert run_cli("work", tree).returncode == 0 and executions(log) == 1
    create_jobs(str(tree), [dict(i=2, log=str(log))], exp, name="g/j{i}")
    w = traced(["work", tree], mark_path(tree / "g"), "openat", "error=EINTR:signal=SIGSTOP:when=1",
               tmp_path / "w.strace")
    try:
        pid = stopped_in(tmp_path / "w.strace", w)
        assert executions(log) == 2  # j2 ran; W is about to mark g
        out = run_cli("requeue", tree, "--force", "i=1")
        assert out.returncode == 0 and status(job) == "ready", out.stderr
        marker = [n for n in os.listdir(tree) if n.startswith(".live.g.")]
        assert marker, "the requeue made no live marker of g: the test shows nothing"
        os.kill(pid, signal.SIGCONT)
        code, _, err = ended(w)
        assert code == 0, err
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    assert os.path.exists(mark_path(tree / "g"))
    proc = run_cli("work", tree)
    assert proc.returncode == 0, proc.stderr
    assert status(job) == "done" and executions(log) == 3, (
        f"the requeued job was never run: live markers of g left: "
        f"{[n for n in os.listdir(tree) if n.startswith('.live.g.')]}")


# ---------------------------------------------------------------- 11, 12. the node's shared refresh

def test_a_stopped_refresh_holder_does_not_make_a_query_wait(tree, node):
    """A query stopped (SIGSTOP, Ctrl-Z) while it holds the node's refresh lock made every
    query, status, requeue, cancel and filtered work of that node wait 600 s."""
    create_jobs(str(tree), [dict(x=i) for i in range(3)], experiment("double"))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import os, signal, sys\n"
        "from dbdict_fs import index\n"
        "lock = index._NodeLock(index.cache_path(os.path.realpath(sys.argv[1])))\n"
        "lock.acquire()\n"
        "assert lock.fd is not None\n"
        "os.kill(os.getpid(), signal.SIGSTOP)\n"), str(tree)])
    try:
        wait_for(lambda: proc_state(holder.pid) == "T", timeout=60, what="the holder to stop")
        for args in (["query", tree, "--format", "json"], ["status", tree, "--format", "json"]):
            proc = run_cli(*args, timeout=60)
            assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["counts"] == {"ready": 3}
    finally:
        holder.kill()
        holder.wait()


def test_a_shared_refresh_never_answers_from_before_a_change_made_before_the_wait(tree, tmp_path, node):
    """Query A begins its refresh and reads job X (ready), and is held there; job X is
    canceled from another node; query B begins, waits for A's refresh and used it: it
    answered `ready` for a job canceled before B began (no read-your-writes)."""
    from dbdict_fs import index

    [x, _] = create_jobs(str(tree), [dict(x=1), dict(x=2)], experiment("double")).created
    a = traced(["query", tree, "--format", "json"], os.path.join(x, "state.0.yaml"), "openat",
               "signal=SIGSTOP:when=1", tmp_path / "a.strace")
    b = None
    try:
        a_pid = stopped_in(tmp_path / "a.strace", a)  # A has opened X's state (ready)
        other = env_for("host-b", DBDICT_CACHE_DIR=str(tmp_path / "b cache"),
                        DBDICT_LOCK_DIR=str(tmp_path / "b locks"))
        proc = run_cli("cancel", tree, "x=1", env=other)
        assert proc.returncode == 0 and status(x) == "canceled", proc.stderr
        lock = index.lock_path(index.cache_path(os.path.realpath(tree)))
        b_log = tmp_path / "b.strace"
        b = traced(["query", tree, "--format", "json"], lock, "flock", None, b_log)

        def waits():  # two failed tries: the lock is held, and B has begun to wait
            return open(b_log).read().count("EAGAIN") + open(b_log).read().count("EWOULDBLOCK") >= 2
        wait_for(waits, timeout=60, what="query B to wait for the node's refresh lock")
        assert a.poll() is None
        os.kill(a_pid, signal.SIGCONT)
        code, out, err = ended(b)
        assert code == 0, err
        assert a.poll() is not None  # B waited for A's refresh
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    rows = {r["x"]: r["dbdict.status"] for r in json.loads(out)}
    assert rows == {1: "canceled", 2: "ready"}, rows


# ---------------------------------------------------------------- 13. tokens of killed processes

@pytest.mark.parametrize("when", ["before its link", "after its link"])
def test_a_token_left_by_a_killed_booker_is_swept_when_the_job_ends(tree, tmp_path, when):
    """A process killed between writing its claim token and removing it left `.tok.*` for
    good when the job then ended within the lease L (only heartbeats swept, after L)."""
    [job] = create_jobs(str(tree), [dict(x=3)], experiment("double")).created
    # Stopped at its link of claim.1 (not made, or made), then killed there.
    inject = "error=EIO:signal=SIGSTOP" if when == "before its link" else "signal=SIGSTOP"
    proc = traced(["run", job], os.path.join(job, "claim.1"), "link,linkat", inject, tmp_path / "run.strace")
    os.kill(stopped_in(tmp_path / "run.strace", proc), signal.SIGKILL)
    ended(proc)
    assert [n for n in os.listdir(job) if n.startswith(".tok.")]
    assert os.path.exists(os.path.join(job, "claim.1")) == (when == "after its link")
    proc = run_cli("work", tree)
    assert proc.returncode == 0 and status(job) == "done", proc.stderr
    assert not [n for n in os.listdir(job) if n.startswith(".tok.")]


# ---------------------------------------------------------------- a mutant the suite let live

def test_a_reader_lists_again_when_the_state_it_listed_is_removed(tree, tmp_path):
    """`show` lists the job (state.0), is stopped before its open of state.0; a cancel writes
    state.1 and removes state.0; the reader's open fails with ENOENT and must list again."""
    [job] = create_jobs(str(tree), [dict(x=1)], experiment("double")).created
    reader = traced(["show", job, "--format", "json"], os.path.join(job, "state.0.yaml"), "openat",
                    "error=EINTR:signal=SIGSTOP:when=1", tmp_path / "show.strace")
    try:
        pid = stopped_in(tmp_path / "show.strace", reader)
        assert run_cli("cancel", tree).returncode == 0
        assert not os.path.exists(os.path.join(job, "state.0.yaml"))
        os.kill(pid, signal.SIGCONT)
        code, out, err = ended(reader)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert code == 0, err
    assert json.loads(out)["state"]["dbdict"]["status"] == "canceled"

"""Commands under the protocol's rules (DESIGN 4, rev 3): short command leases, no running
state under a command's claim, only run claims count as attempts, stale decided by booking
alone (never by comparing this host's clock with a claim's mtime), and status, query,
requeue and cancel agreeing on every job. Real processes, real trees."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from dbdict_fs import booking, create_jobs
from dbdict_fs import jobdir as jd

from conftest import experiment, read_state, run_cli, wait_for
from procs import token_dead_here

CLI = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]


def status_json(tree):
    proc = run_cli("status", tree, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def query_status(tree):
    proc = run_cli("query", tree, "--format", "json", "--columns", "dbdict.path,dbdict.status")
    assert proc.returncode == 0, proc.stderr
    return {r["dbdict.path"]: r["dbdict.status"] for r in json.loads(proc.stdout)}


def purposes(job):
    return [jd.read_claim(job, e)["purpose"] for e in sorted(jd.list_job(job).claim_epochs)]


def test_command_claims_have_a_short_lease(tree):
    job = create_jobs(tree, [{"x": 1}], experiment("fails")).created[0]
    assert run_cli("run", job).returncode == 1
    assert run_cli("requeue", tree).returncode == 0
    token = jd.read_claim(job, 2)
    assert token["purpose"] == "requeue" and token["lease"] <= 30 and token["heartbeat"] <= token["lease"] / 5


def test_command_claims_never_count_as_attempts(tree):
    """Commands that claim and give back (any number of them) must not push a job that never
    ran to `failed` ("lost its worker N times")."""
    job = create_jobs(tree, [{"x": 3}], experiment("double")).created[0]
    lease, beat = booking.command_lease()
    for _ in range(4):
        held = booking.claim(job, force=True, purpose="cancel", wait=False, lease=lease, heartbeat=beat)
        booking.give_back(held)
    proc = run_cli("run", job, "--max-attempts", "2")
    assert proc.returncode == 0, proc.stderr
    book = read_state(job)["dbdict"]
    assert book["status"] == "done" and book["attempts"] == 1
    assert purposes(job) == ["cancel"] * 4 + ["run"]


def test_a_command_killed_after_its_link_blocks_the_job_only_for_its_short_lease(tree):
    """kill -9 between link and write: the job is `booked` by a dead command; a waiting worker
    takes it once the command's (short) lease has been observed, not after 600 s."""
    job = create_jobs(tree, [{"x": 5}], experiment("double")).created[0]
    env = dict(os.environ, DBDICT_COMMAND_LEASE="3", DBDICT_HOST="login-node")  # another host: no fast path
    code = ("import os, sys; from dbdict_fs import booking; l, h = booking.command_lease(); "
            "booking.claim(sys.argv[1], force=True, purpose='requeue', wait=False, lease=l, heartbeat=h); "
            "os.kill(os.getpid(), 9)")
    dead = subprocess.run([sys.executable, "-c", code, job], env=env, timeout=60)
    assert dead.returncode == -signal.SIGKILL
    assert jd.list_job(job).claim_epoch == 1 and jd.read_claim(job, 1)["lease"] == 3.0
    assert query_status(tree)[job] == "booked"
    worker = subprocess.run(CLI + ["work", str(tree), "--wait", "-q"], timeout=120,
                            capture_output=True, text=True, env=dict(os.environ, DBDICT_LEASE="20",
                                                                     DBDICT_HEARTBEAT="1"))
    assert worker.returncode == 0, worker.stderr
    state = read_state(job)
    assert state["dbdict"]["status"] == "done" and state["result"] == 10
    assert purposes(job) == ["requeue", "run"]


@pytest.mark.skipif(shutil.which("faketime") is None, reason="needs faketime (apt-get install faketime)")
def test_a_command_with_a_clock_120s_ahead_leaves_a_healthy_job_alone(tree):
    job = create_jobs(tree, [{"steps": 400, "step_time": 0.05}], experiment("resumable")).created[0]
    env = dict(os.environ, DBDICT_HOST="node7", DBDICT_LEASE="60", DBDICT_HEARTBEAT="1")
    worker = subprocess.Popen(CLI + ["run", job], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert wait_for(lambda: read_state(job)["dbdict"]["status"] == "running", timeout=60)
        ahead = ["faketime", "-f", "+120s"]
        base = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]
        for args in (["requeue", str(tree)], ["requeue", str(tree), "--status", "stale"],
                     ["cancel", str(tree), "status=stale"]):
            proc = subprocess.run(ahead + base + args, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
        st = subprocess.run(ahead + base + ["status", str(tree), "--format", "json"], capture_output=True,
                            text=True, timeout=120)
        assert json.loads(st.stdout)["counts"] == {"running": 1}
        assert purposes(job) == ["run"]  # no command claimed it, so its worker was never fenced
        assert worker.poll() is None
    finally:
        worker.kill()
        worker.wait()


def test_status_and_query_agree_on_every_job(tree):
    jobs = create_jobs(tree, [{"x": i} for i in range(4)], experiment("double")).created
    assert run_cli("run", jobs[0]).returncode == 0
    for job, token in ((jobs[1], token_dead_here()),  # same host, holder gone: stale
                       (jobs[2], {"host": "far", "boot_id": "b", "pidns": "p", "pid": 1, "lease": 5,
                                  "heartbeat": 1, "purpose": "run"})):  # another host: running
        with open(os.path.join(job, "claim.1"), "w") as f:
            json.dump(token, f)
        state = read_state(job)
        state["dbdict"].update(status="running", epoch=1)
        jd.write_state_file(job, 1, state)
        past = os.stat(os.path.join(job, "claim.1")).st_mtime - 3600
        os.utime(os.path.join(job, "claim.1"), (past, past))
    expected = {jobs[0]: "done", jobs[1]: "stale", jobs[2]: "running", jobs[3]: "ready"}
    assert query_status(tree) == expected
    counts = status_json(tree)["counts"]
    assert counts == {"done": 1, "stale": 1, "running": 1, "ready": 1}
    # requeue takes exactly the job booking calls stale, and says nothing else changed
    proc = run_cli("requeue", tree)
    assert proc.returncode == 0 and "requeued 1 of" in proc.stderr, proc.stderr
    assert read_state(jobs[1])["dbdict"]["status"] == "ready"
    assert read_state(jobs[2])["dbdict"]["status"] == "running"


def test_a_give_back_that_raced_a_holder_never_writes_running(tree):
    """A command that links just after a worker started the job finds `running` in the state
    it won: it must hand the job back as ready (its claim fenced the worker), never leave a
    `running` state that no process runs."""
    job = create_jobs(tree, [{"x": 2}], experiment("double")).created[0]
    token = {"host": "far", "boot_id": "b", "pidns": "p", "pid": 1, "lease": 600, "heartbeat": 30,
             "purpose": "run"}
    with open(os.path.join(job, "claim.1"), "w") as f:
        json.dump(token, f)
    state = read_state(job)
    state["dbdict"].update(status="running", epoch=1, attempts=1)
    jd.write_state_file(job, 1, state)
    lease, beat = booking.command_lease()
    held = booking.claim(job, force=True, purpose="requeue", wait=False, lease=lease, heartbeat=beat)
    booking.give_back(held)
    assert read_state(job)["dbdict"]["status"] == "ready"
    assert run_cli("run", job).returncode == 0 and read_state(job)["result"] == 4


def test_requeue_force_alone_requeues_done_jobs(tree):
    job = create_jobs(tree, [{"x": 4}], experiment("double")).created[0]
    assert run_cli("run", job).returncode == 0
    assert run_cli("requeue", tree).returncode == 0 and read_state(job)["dbdict"]["status"] == "done"
    proc = run_cli("requeue", tree, "--force")
    assert proc.returncode == 0, proc.stderr
    assert read_state(job)["dbdict"]["status"] == "ready"
    help_text = run_cli("requeue", "--help").stdout
    assert "--force" in help_text and "done" in help_text and "fence" in help_text


def test_a_link_whose_reply_was_lost_is_won_by_the_link_count(tree):
    """NFS: a retransmitted LINK can answer EEXIST although the first one made the claim.
    The token's link count decides (DESIGN 4): the worker runs the job it really holds,
    instead of leaving a claim without a state (the job `booked` by nobody for a lease)."""
    job = create_jobs(tree, [{"x": 6}], experiment("double")).created[0]
    proc = run_cli("run", job, env={"DBDICT_TEST_LOST_LINK_REPLY": "1"})
    assert proc.returncode == 0, proc.stderr
    state = read_state(job)
    assert state["dbdict"]["status"] == "done" and state["result"] == 12 and state["dbdict"]["epoch"] == 1
    assert not [n for n in os.listdir(job) if n.startswith(".tok.")]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (apt-get install strace)")
def test_a_token_swept_during_a_stalled_link_means_try_the_next_job(tree):
    """link() fails with ENOENT when our token was swept while link() stalled (here: strace
    delays the first link by 3 s and the test removes the token, as a sweeper would): a lost
    race, not an error. The worker goes on with the other jobs and exits 0, not 2."""
    jobs = create_jobs(tree, [{"x": i} for i in (1, 2)], experiment("double")).created
    worker = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=link,linkat",
                               "-e", "inject=link,linkat:delay_enter=3000000:when=1"] + CLI + ["work", str(tree)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def tokens():
            return [os.path.join(j, n) for j in jobs for n in os.listdir(j) if n.startswith(".tok.")]
        found = wait_for(tokens, timeout=60)
        assert found
        for path in tokens():
            os.unlink(path)
        out, err = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert worker.returncode == 0, err
    assert all(read_state(j)["dbdict"]["status"] == "done" for j in jobs)


def test_python_api_of_status_requeue_cancel_show_returns_data(tree):
    import dbdict_fs

    jobs = create_jobs(tree, [{"x": i} for i in range(3)], experiment("fails")).created
    for job in jobs:
        assert run_cli("run", job).returncode == 1
    report = dbdict_fs.status(str(tree))
    assert report["counts"] == {"failed": 3} and report["total"] == 3
    assert dbdict_fs.requeue(str(tree), filters=["x=0"], dry_run=True)["changed"] == [{"path": jobs[0], "was": "failed"}]
    assert read_state(jobs[0])["dbdict"]["status"] == "failed"  # a dry run changes nothing
    done = dbdict_fs.requeue(str(tree), where="x < 2")
    assert sorted(c["path"] for c in done["changed"]) == sorted(jobs[:2]) and done["errors"] == []
    canceled = dbdict_fs.cancel(str(tree))["changed"]
    assert sorted(c["path"] for c in canceled) == sorted(jobs[:2]) and {c["was"] for c in canceled} == {"ready"}
    assert dbdict_fs.status(str(tree))["counts"] == {"canceled": 2, "failed": 1}
    shown = dbdict_fs.show(jobs[2])
    assert shown["config"]["x"] == 2 and shown["claims"][0]["purpose"] == "run"
    with pytest.raises(dbdict_fs.DbdictError):
        dbdict_fs.requeue(str(tree), status="finished")


def test_a_worker_takes_a_job_whose_scheduler_task_is_gone_at_once(tree, tmp_path):
    """The scheduler-gone fast path for workers (DESIGN 4): a claim whose token names a SLURM
    task that squeue no longer lists is stale at once, not after its 600 s lease. squeue here
    is a stand-in on PATH that lists no job (what the real one prints for a finished task)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text("#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/calls\"\nexit 0\n")
    squeue.chmod(0o755)
    job = create_jobs(tree, [{"x": 8}], experiment("double")).created[0]
    token = {"host": "node3", "boot_id": "other", "pidns": "x", "pid": 1, "lease": 600, "heartbeat": 30,
             "purpose": "run", "cluster_job": "4242_0", "time": "2026-01-01T00:00:00Z"}
    with open(os.path.join(job, "claim.1"), "w") as f:
        json.dump(token, f)
    state = read_state(job)
    state["dbdict"].update(status="running", epoch=1, cluster_job="4242_0")
    jd.write_state_file(job, 1, state)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", DBDICT_HOST="node4",
               DBDICT_LEASE="600", DBDICT_HEARTBEAT="2")
    worker = subprocess.run(CLI + ["work", str(tree), "--wait", "-q"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert worker.returncode == 0, worker.stderr
    state = read_state(job)
    assert state["dbdict"]["status"] == "done" and state["result"] == 16
    assert purposes(job) == ["run", "run"]
    calls = (bin_dir / "calls").read_text().splitlines()
    assert calls and all("4242_0" in c for c in calls)  # one batched call per pass, for that task

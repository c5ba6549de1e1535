"""status, requeue, cancel, show, logs: subprocesses on real trees, also while workers run."""

import json
import os
import subprocess
import sys
import time

import pytest

from dbdict_fs import create_jobs
from dbdict_fs import jobdir as jd

from conftest import experiment, read_state, run_cli, wait_for

CLI = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]
from procs import token_dead_here

FAST = {"DBDICT_LEASE": "2", "DBDICT_HEARTBEAT": "0.2"}


def status_json(tree, *filters):
    proc = run_cli("status", tree, *filters, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def fake_running_elsewhere(job, lease, age, token=None):
    """Make `job` look held by a worker of another host whose last heartbeat was `age` s ago
    (or by the holder `token` names)."""
    token = token or {"host": "otherhost", "boot_id": "other-boot", "pidns": "x", "pid": 1, "lease": lease,
                      "heartbeat": lease / 5, "purpose": "run", "time": "2026-01-01T00:00:00Z"}
    with open(os.path.join(job, "claim.1"), "w") as f:
        json.dump(token, f)
    state = read_state(job)
    state["dbdict"].update(status="running", epoch=1, attempts=1, host="otherhost", pid=1)
    jd.write_state_file(job, 1, state)
    past = time.time() - age
    os.utime(os.path.join(job, "claim.1"), (past, past))


@pytest.fixture
def mixed_tree(tree):
    jobs = {}
    for name, exp in (("done", "double"), ("failed", "fails"), ("ready", "double"),
                      ("stale", "double"), ("booked", "double"), ("corrupt", "double")):
        jobs[name] = create_jobs(tree, [{"x": len(jobs) + 1, "kind": name}], experiment(exp)).created[0]
    assert run_cli("run", jobs["done"]).returncode == 0
    assert run_cli("run", jobs["failed"]).returncode == 1
    fake_running_elsewhere(jobs["stale"], lease=5, age=60, token=token_dead_here(lease=5))
    jobs["overdue"] = create_jobs(tree, [{"x": 99, "kind": "overdue"}], experiment("double")).created[0]
    fake_running_elsewhere(jobs["overdue"], lease=5, age=60)  # another host: no proof it is dead
    with open(os.path.join(jobs["booked"], "claim.1"), "w") as f:
        json.dump({"host": "otherhost", "pid": 1, "lease": 600}, f)
    with open(os.path.join(jobs["corrupt"], "state.0.yaml"), "w") as f:
        f.write("\x00\x01 binary garbage")
    return tree, jobs


def test_status_counts_every_status(mixed_tree):
    tree, jobs = mixed_tree
    report = status_json(tree)
    # stale only where booking proves the holder gone (here: same host, pid gone); a holder
    # on another host whose heartbeat is a minute old is `running`, shown as overdue
    assert report["counts"] == {"done": 1, "failed": 1, "ready": 1, "stale": 1, "booked": 1, "corrupt": 1,
                                "running": 1}
    running = {r["path"]: r for r in report["running"]}
    assert running[jobs["overdue"]]["host"] == "otherhost" and running[jobs["overdue"]]["heartbeat_age"] >= 59
    assert running[jobs["overdue"]]["heartbeat_overdue"] and not running[jobs["booked"]]["heartbeat_overdue"]
    assert report["failed"][0]["error"].startswith("ValueError")
    table = run_cli("status", tree)
    assert table.returncode == 0 and "7 jobs" in table.stdout and "1 stale" in table.stdout
    assert "heartbeat overdue" in table.stdout
    assert "ValueError: bad x" in table.stdout
    assert status_json(tree, "kind=done")["counts"] == {"done": 1}


def test_requeue_defaults_to_failed_canceled_stale(mixed_tree):
    tree, jobs = mixed_tree
    dry = run_cli("requeue", tree, "--dry-run")
    assert dry.returncode == 0 and status_json(tree)["counts"]["failed"] == 1
    proc = run_cli("requeue", tree)
    assert proc.returncode == 0, proc.stderr
    assert "requeued 2 of" in proc.stderr
    counts = status_json(tree)["counts"]
    assert counts.get("failed") is None and counts.get("stale") is None and counts["ready"] == 3
    assert counts["running"] == 1  # the overdue job of another host is not taken without --force
    # the stale job was requeued under a new claim that fences its old holder
    book = read_state(jobs["stale"])["dbdict"]
    assert book["epoch"] == 2 and book["requeue_epoch"] == 2 and book["status"] == "ready"
    assert json.load(open(os.path.join(jobs["stale"], "claim.2")))["purpose"] == "requeue"


def test_requeue_done_needs_force(mixed_tree):
    tree, jobs = mixed_tree
    refused = run_cli("requeue", tree, "--status", "done")
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert run_cli("requeue", tree, "--status", "done", "--force", "--priority", "7").returncode == 0
    book = read_state(jobs["done"])["dbdict"]
    assert book["status"] == "ready" and book["priority"] == 7.0
    assert run_cli("run", jobs["done"]).returncode == 0
    assert read_state(jobs["done"])["result"] == 2


def test_cancel_leaves_done_and_failed_alone(mixed_tree):
    tree, jobs = mixed_tree
    assert run_cli("cancel", tree).returncode == 0
    counts = status_json(tree)["counts"]
    assert counts == {"done": 1, "failed": 1, "canceled": 4, "corrupt": 1}
    assert run_cli("run", jobs["ready"]).returncode == 4


def test_cancel_running_job_fences_its_worker(tree):
    job = create_jobs(tree, [{"steps": 400, "step_time": 0.05}], experiment("resumable")).created[0]
    worker = subprocess.Popen(CLI + ["work", str(tree), "--save-every", "0.3"], env=dict(os.environ, **FAST),
                              stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: "progress" in read_state(job))
        saved = read_state(job)["progress"]
        proc = run_cli("cancel", tree)
        assert proc.returncode == 0 and "canceled: " in proc.stdout
        _, err = worker.communicate(timeout=20)
    finally:
        worker.kill()
    assert "cancel" in err  # the worker says why it stopped
    state = read_state(job)
    assert state["dbdict"]["status"] == "canceled" and state["progress"] >= saved  # nothing lost
    assert state["dbdict"]["epoch"] == jd.list_job(job).claim_epoch
    ckpt = open(os.path.join(job, "workdir", "ckpt")).read()
    time.sleep(0.5)
    assert open(os.path.join(job, "workdir", "ckpt")).read() == ckpt  # the experiment is gone


def test_requeue_and_cancel_racing_workers_never_lose_results(tree):
    """Workers finish jobs while cancel/requeue sweep the tree: every job ends done (with its
    result) or canceled, each final state belongs to the top claim, and requeued ones rerun."""
    log = tree.parent / "log"
    create_jobs(tree, [{"i": i, "g3": i % 3, "g2": i % 2, "log": str(log), "sleep": 0.05} for i in range(40)],
                experiment("append_log"))
    env = dict(os.environ, **FAST)
    workers = [subprocess.Popen(CLI + ["work", str(tree), "-q"], env=env) for _ in range(2)]
    try:
        for _ in range(3):
            # filters the parser accepts (an earlier `--where "i % 3 == 0"` was rejected, so
            # the race raced nothing): each command must succeed
            cancel = run_cli("cancel", tree, "--where", "g3 == 0", env=FAST)
            assert cancel.returncode == 0, cancel.stderr
            requeue = run_cli("requeue", tree, "--status", "canceled", "g2=0", env=FAST)
            assert requeue.returncode == 0, requeue.stderr
        for w in workers:
            w.wait(120)
    finally:
        for w in workers:
            w.kill()
    assert run_cli("work", tree, "-q", env=FAST).returncode == 0
    counts = {"cancel": 0, "requeue": 0}
    for path in jd.iter_jobdirs(str(tree)):
        state = read_state(path)
        book = state["dbdict"]
        assert book["epoch"] == jd.list_job(path).claim_epoch, path
        assert book["status"] in ("done", "canceled"), book
        if book["status"] == "done":
            assert state["result"] == state["i"]
        else:
            assert state["g3"] == 0  # only what cancel selected was canceled
        purposes = [json.load(open(os.path.join(path, f"claim.{e}")))["purpose"]
                    for e in sorted(jd.list_job(path).claim_epochs)]
        counts["cancel"] += purposes.count("cancel")
        counts["requeue"] += purposes.count("requeue")
        # command claims never count as attempts
        assert book.get("attempts", 0) <= purposes[book.get("requeue_epoch", 0):].count("run"), repr((purposes, book))
    # the commands really raced the workers: they changed jobs
    assert counts["cancel"] > 0 and counts["requeue"] > 0, counts


def test_show_and_logs(tree):
    job = create_jobs(tree, [{"x": 7}], experiment("double")).created[0]
    run_cli("run", job)
    show = run_cli("show", job)
    assert show.returncode == 0
    assert "## config.yaml" in show.stdout and '"result": 14' in show.stdout and "claim.1: run" in show.stdout
    data = json.loads(run_cli("show", job, "--format", "json").stdout)
    assert data["state"]["result"] == 14 and data["claims"][0]["purpose"] == "run"
    logs = run_cli("logs", job)
    assert logs.returncode == 0 and "x is 7" in logs.stdout
    assert "to stderr" in run_cli("logs", job, "--stderr").stdout
    missing = run_cli("show", str(job) + "x")
    assert missing.returncode == 2 and "no such directory" in missing.stderr


def test_requeue_stale_skips_a_job_claimed_since_selection(tree):
    """A row selected as stale whose job a live worker claimed since must not be taken (a
    command's claim would fence the live worker): the decision uses fresh reads."""
    from dbdict_fs import ops

    job = create_jobs(tree, [{"sleep": 30}], experiment("sleeper")).created[0]
    worker = subprocess.Popen(CLI + ["run", job], env=dict(os.environ, **FAST))
    try:
        assert wait_for(lambda: read_state(job)["dbdict"]["status"] == "running")
        # the caller believes the job is stale (an old index row): fresh reads say running
        assert not ops.change_job(job, ops.requeue_transform(("stale",)), "requeue")
        assert jd.list_job(job).claim_epoch == 1  # no claim was made, nobody was fenced
        assert worker.poll() is None
    finally:
        worker.kill()
        worker.wait()

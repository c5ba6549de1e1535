"""Preemption, resume and time budgets (DESIGN.md 5): channel stop / finish-up / save,
attempts, max-runtime and node-local scratch, with real worker processes and signals."""

import os
import signal
import subprocess
import sys
import time

import pytest

from dbdict_fs import create_jobs

from conftest import experiment, pid_gone, read_state, run_cli, wait_for

CLI = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]


def make_job(tree, name, **config):
    return create_jobs(tree, [config], experiment(name)).created[0]


def status(job):
    try:
        return read_state(job)["dbdict"]["status"]
    except Exception:  # noqa: BLE001 - mid-write listings are retried by the caller
        return None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2])
def test_worker_signal_requeues_then_resumes_to_same_result(tree, sig):
    job = make_job(tree, "resumable", steps=40, step_time=0.05)
    worker = subprocess.Popen(CLI + ["work", str(tree), "-q"])
    assert wait_for(lambda: os.path.exists(os.path.join(job, "workdir", "ckpt")))
    worker.send_signal(sig)
    assert worker.wait(30) == 3  # interrupted worker exits 3
    state = read_state(job)
    assert state["dbdict"]["status"] == "ready" and state["dbdict"]["priority"] == 2.0
    stopped_at = state["progress"]
    assert 0 < stopped_at < 40
    assert run_cli("work", tree, "-q").returncode == 0
    state = read_state(job)
    assert state["dbdict"]["status"] == "done" and state["result"] == 40  # same as uninterrupted
    assert state["resumed_from"] >= stopped_at  # from its checkpoint, not from scratch
    uninterrupted = make_job(tree, "resumable", steps=40, step_time=0.0)
    assert run_cli("run", uninterrupted).returncode == 0
    assert read_state(uninterrupted)["result"] == state["result"]


def test_second_sigterm_kills_at_once(tree):
    job = make_job(tree, "ignores_stop", sleep=60)
    worker = subprocess.Popen(CLI + ["run", job, "--grace", "60"])
    assert wait_for(lambda: status(job) == "running")
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 3
    assert status(job) == "ready"


def test_finish_up_after(tree):
    job = make_job(tree, "resumable", steps=1000, step_time=0.02)
    proc = run_cli("run", job, "--finish-up-after", "1")
    assert proc.returncode == 3, proc.stderr
    state = read_state(job)
    assert state["dbdict"]["status"] == "ready" and 0 < state["progress"] < 1000


def test_save_every_commits_while_running(tree):
    job = make_job(tree, "resumable", steps=100, step_time=0.05)
    worker = subprocess.Popen(CLI + ["run", job, "--save-every", "0.5"])
    try:
        seen = []

        def saved_twice():
            state = read_state(job)
            if state["dbdict"]["status"] == "running" and "progress" in state:
                if not seen or seen[-1] != state["progress"]:
                    seen.append(state["progress"])
            return len(seen) >= 2

        assert wait_for(saved_twice, timeout=30)
        assert seen[0] < seen[1]
        # intermediate results are visible to queries while the job runs
        proc = run_cli("query", tree, "--format", "json", "--columns", "progress,dbdict.status")
        if proc.returncode == 0:
            import json
            rows = json.loads(proc.stdout)
            assert rows and rows[0]["dbdict.status"] == "running" and rows[0]["progress"] >= seen[0]
        assert worker.wait(60) == 0
    finally:
        worker.kill()
    assert read_state(job)["result"] == 100


def test_max_runtime_kills_and_counts_an_attempt(tree):
    job = make_job(tree, "ignores_stop", sleep=30)
    proc = run_cli("run", job, "--max-runtime", "1", "--max-attempts", "2")
    assert proc.returncode == 3
    book = read_state(job)["dbdict"]
    assert book["status"] == "ready" and "max-runtime" in book["error"]
    assert run_cli("run", job, "--max-runtime", "1", "--max-attempts", "2").returncode == 1
    book = read_state(job)["dbdict"]
    assert book["status"] == "failed" and "max_attempts 2" in book["error"]


def test_lost_worker_counts_toward_max_attempts(tree):
    """A worker killed with -9 three times: the next booking marks the job failed."""
    job = make_job(tree, "sleeper", sleep=60)
    for epoch in (1, 2):
        worker = subprocess.Popen(CLI + ["run", job])
        assert wait_for(lambda: status(job) == "running" and read_state(job)["dbdict"]["epoch"] == epoch)
        worker.kill()
        worker.wait()
    # same host, dead pid: the next one-shot takes over at once (no lease wait)
    proc = run_cli("run", job, "--max-attempts", "2")
    assert proc.returncode == 1, proc.stderr
    book = read_state(job)["dbdict"]
    assert book["status"] == "failed" and "lost its worker" in book["error"]


def test_max_resumes(tree):
    job = make_job(tree, "resumable", steps=1000, step_time=0.01)
    for _ in range(2):
        assert run_cli("run", job, "--finish-up-after", "0.2", "--max-resumes", "2").returncode == 3
    assert run_cli("run", job, "--finish-up-after", "0.2", "--max-resumes", "2").returncode == 1
    book = read_state(job)["dbdict"]
    assert book["status"] == "failed" and "INCOMPLETE 3 times" in book["error"]


def test_scratch_syncs_back_checkpoints_and_result(tree, tmp_path):
    scratch = tmp_path / "local scratch"
    scratch.mkdir()
    job = make_job(tree, "resumable", steps=30, step_time=0.02)
    assert run_cli("run", job, "--scratch", scratch, "--finish-up-after", "0.2").returncode == 3
    ckpt = os.path.join(job, "workdir", "ckpt")
    first = int(open(ckpt).read())
    assert first > 0  # the checkpoint came back to the shared workdir
    assert os.listdir(scratch) == []  # the scratch copy is removed
    env = {"DBDICT_EXPERIMENT_TEMPDIR": str(scratch)}
    assert run_cli("run", job, env=env).returncode == 0
    state = read_state(job)
    assert state["result"] == 30 and state["resumed_from"] == first  # copied to scratch, resumed
    assert int(open(ckpt).read()) == 30
    assert not [n for n in os.listdir(os.path.join(job, "workdir")) if n.startswith(".tmp")]
    assert os.listdir(scratch) == []


def test_attempt_headers_record_every_attempt(tree):
    job = make_job(tree, "once_incomplete", x=1)
    run_cli("run", job)
    run_cli("run", job)
    headers = [line for line in open(os.path.join(job, "stdout")) if line.startswith("==== dbdict attempt")]
    assert len(headers) == 2 and "(epoch 1)" in headers[0] and "(epoch 2)" in headers[1]
    # one numbering everywhere: header N is attempt N, `logs --attempt N` prints it, `show`
    # and the state say the same (an INCOMPLETE return restarted max_attempts' count only)
    assert headers[0].startswith("==== dbdict attempt 1 ") and headers[1].startswith("==== dbdict attempt 2 ")
    logs = run_cli("logs", job, "--attempt", "2")
    assert logs.returncode == 0 and logs.stdout.startswith("==== dbdict attempt 2 (epoch 2)")
    assert run_cli("logs", job, "--attempt", "3").returncode == 2
    assert "attempt 2 ran last" in run_cli("show", job).stdout


def test_no_orphan_after_kill_9(tree):
    job = make_job(tree, "sleeper", sleep=60)
    worker = subprocess.Popen(CLI + ["run", job])
    pidfile = os.path.join(job, "workdir", "child.pid")
    assert wait_for(lambda: os.path.exists(pidfile) and open(pidfile).read().strip())
    child = int(open(pidfile).read())
    os.kill(child, 0)
    worker.kill()
    worker.wait()

    assert wait_for(lambda: pid_gone(child), timeout=10), "the experiment outlived its kill -9ed worker"


def test_holder_sweeps_transient_files_left_by_dead_processes(tree):
    """A .tok/.tmp file unchanged for the lease is removed by the job's holder; a fresh one
    (it could be a live process's) is left alone."""
    job = make_job(tree, "resumable", steps=80, step_time=0.05)
    old_tok = os.path.join(job, ".tok.deadhost.999999.abcd")
    old_tmp = os.path.join(job, ".tmp.state.3.yaml.999999.abcd")
    for path in (old_tok, old_tmp):
        with open(path, "w") as f:
            f.write("left by a kill -9")
    worker = subprocess.Popen(CLI + ["run", job, "--lease", "1", "--heartbeat", "0.2"])
    try:
        assert wait_for(lambda: not os.path.exists(old_tok) and not os.path.exists(old_tmp), timeout=20)
        fresh = os.path.join(job, ".tok.otherhost.12345.beef")
        with open(fresh, "w") as f:
            f.write("just written")
        time.sleep(0.5)  # less than the lease: must survive
        assert os.path.exists(fresh)
        assert worker.wait(30) == 0
    finally:
        worker.kill()
    assert read_state(job)["result"] == 80


def test_experiment_death_noticed_while_its_fork_holds_the_pipe(tree):
    """The experiment dies without a result while a process it forked keeps the result pipe
    open: the worker must still notice (by polling), requeue, and stop heartbeating."""
    job = make_job(tree, "fork_then_die", x=1)
    started = time.time()
    proc = run_cli("run", job, "--lease", "10", "--heartbeat", "2", timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert time.time() - started < 15
    book = read_state(job)["dbdict"]
    assert book["status"] == "ready" and "SIGKILL" in book["error"]


def test_helpers_of_the_experiment_die_with_a_kill_9ed_worker(tree):
    job = make_job(tree, "with_helper", sleep=60)
    worker = subprocess.Popen(CLI + ["run", job])
    pidfile = os.path.join(job, "workdir", "helper.pid")
    try:
        assert wait_for(lambda: os.path.exists(pidfile) and open(pidfile).read().strip())
        helper = int(open(pidfile).read())
        assert not pid_gone(helper)
        worker.kill()
        worker.wait()
        assert wait_for(lambda: pid_gone(helper), timeout=10), "the experiment's helper outlived its worker"
        # and the same-host fast path takes the job at once (no live process group left)
        proc = run_cli("run", job, "--max-runtime", "1")
        assert proc.returncode == 3 and "max-runtime" in read_state(job)["dbdict"]["error"]
    finally:
        worker.kill()

"""`dbdict-run-job run JOBDIR`: one attempt, its outcome and exit code (DESIGN.md 5, 7)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dbdict_fs import create_jobs, run_job
from dbdict_fs.errors import NotRunnable

from conftest import experiment, read_state, run_cli, wait_for


def make_job(tree, name, **config):
    return create_jobs(tree, [config or {"x": 1}], experiment(name)).created[0]


def test_done_with_results_and_logs(tree):
    job = make_job(tree, "double", x=21)
    proc = run_cli("run", job, prog="dbdict-run-job")
    assert proc.returncode == 0, proc.stderr
    state = read_state(job)
    book = state["dbdict"]
    assert state["result"] == 42 and state["x"] == 21
    assert book["status"] == "done" and book["returned"] == "complete"
    assert book["epoch"] == 1 and book["attempts"] == 1 and book["duration"] >= 0
    assert book["host"] and book["pid"] and book["start"] and book["end"]
    assert os.readlink(os.path.join(job, "state.yaml")) == "state.1.yaml"
    assert not os.path.exists(os.path.join(job, "state.0.yaml"))  # older states are removed
    out = open(os.path.join(job, "stdout")).read().splitlines()
    assert out[0].startswith("==== dbdict attempt 1 (epoch 1)") and out[1] == "x is 21"
    err = open(os.path.join(job, "stderr")).read().splitlines()
    assert err[0].startswith("==== dbdict attempt 1") and err[1] == "to stderr"
    assert not [n for n in os.listdir(job) if n.startswith((".tok.", ".tmp."))]
    # running a done job again: exit 4, nothing changes
    again = run_cli("run", job)
    assert again.returncode == 4 and "done" in again.stderr
    assert read_state(job) == state


def test_failure_keeps_traceback(tree):
    job = make_job(tree, "fails", x=3)
    proc = run_cli("run", job)
    assert proc.returncode == 1
    book = read_state(job)["dbdict"]
    assert book["status"] == "failed" and book["error"] == "ValueError: bad x 3"
    err = open(os.path.join(job, "stderr")).read()
    assert "Traceback (most recent call last)" in err and 'raise ValueError(f"bad x' in err
    assert "dbdict_fs/child.py" not in err  # the user's frames, not ours
    assert run_cli("run", job).returncode == 4


def test_incomplete_requeues_and_resumes_in_same_workdir(tree):
    job = make_job(tree, "once_incomplete", x=1)
    first = run_cli("run", job)
    assert first.returncode == 3
    book = read_state(job)["dbdict"]
    assert book["status"] == "ready" and book["priority"] == 2.0 and book["returned"] == "incomplete"
    assert book["requeue_epoch"] == 1
    second = run_cli("run", job)
    assert second.returncode == 0, second.stderr
    state = read_state(job)
    assert state["result"] == "resumed" and state["dbdict"]["status"] == "done"
    assert state["first_cwd"] == state["second_cwd"] == os.path.realpath(os.path.join(job, "workdir"))
    assert state["dbdict"]["attempts"] == 1  # a clean INCOMPLETE return never counts as a lost attempt


def test_class_form_start_then_resume(tree):
    job = make_job(tree, "Counter", n=4)
    assert run_cli("run", job).returncode == 3
    state = read_state(job)
    assert state["started"] is True and "resumed" not in state and state["runs_seen"] == 1
    assert state["opt"] == {"lr": 0.1}  # class defaults fill missing keys
    assert run_cli("run", job).returncode == 0
    state = read_state(job)
    assert state["resumed"] is True and state["result"] == 40 and state["runs_seen"] == 2


def test_crashing_experiment_retried_until_max_attempts(tree):
    job = make_job(tree, "crashes", x=1)
    codes = [run_cli("run", job, "--max-attempts", "2").returncode for _ in range(3)]
    assert codes == [3, 1, 4]
    book = read_state(job)["dbdict"]
    assert book["status"] == "failed" and "SIGKILL" in book["error"] and book["attempts"] == 2


def test_unstorable_value_fails_clearly(tree):
    job = make_job(tree, "bad_value", x=1)
    assert run_cli("run", job).returncode == 1
    assert "cannot be stored" in read_state(job)["dbdict"]["error"]


def test_python_api(tree):
    job = make_job(tree, "double", x=5)
    outcome = run_job(job)
    assert outcome.status == "done" and outcome.exit_code == 0
    assert read_state(job)["result"] == 10
    with pytest.raises(NotRunnable):
        run_job(job)


def test_sigterm_stops_and_requeues_then_resumes(tree):
    job = make_job(tree, "resumable", steps=60, step_time=0.05)
    code = "import sys; from dbdict_fs.cli import main_run_job; sys.exit(main_run_job())"
    proc = subprocess.Popen([sys.executable, "-c", code, "run", job])
    assert wait_for(lambda: os.path.exists(os.path.join(job, "workdir", "ckpt")))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 3
    state = read_state(job)
    assert state["dbdict"]["status"] == "ready" and 0 < state["progress"] < 60
    assert run_cli("run", job).returncode == 0
    state = read_state(job)
    assert state["result"] == 60 and state["resumed_from"] >= 1  # resumed from its checkpoint


def test_stop_ignored_is_killed_after_grace(tree):
    job = make_job(tree, "ignores_stop", sleep=60)
    code = "import sys; from dbdict_fs.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "run", job, "--grace", "1"])
    assert wait_for(lambda: read_state(job)["dbdict"]["status"] == "running")
    time.sleep(0.3)
    started = time.time()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 3
    assert time.time() - started < 10
    book = read_state(job)["dbdict"]
    assert book["status"] == "ready" and "grace" in book["error"]


@pytest.mark.parametrize("setup, message", [
    ("missing", "no such directory"),
    ("noconfig", "not a job directory"),
    ("corrupt_state", "corrupt"),
    ("corrupt_config", "corrupt"),
    ("wrong_types", "wrong type"),
])
def test_bad_job_directories_exit_2(tree, setup, message):
    job = make_job(tree, "double", x=1)
    if setup == "missing":
        job = job + "-nope"
    elif setup == "noconfig":
        os.unlink(os.path.join(job, "config.yaml"))
    elif setup == "corrupt_state":
        open(os.path.join(job, "state.0.yaml"), "w").write("{ not json\n  - nor: [yaml")
    elif setup == "corrupt_config":
        open(os.path.join(job, "config.yaml"), "w").write("- a list\n- not a mapping\n")
    elif setup == "wrong_types":
        state = json.load(open(os.path.join(job, "state.0.yaml")))
        state["dbdict"]["epoch"] = "zero"
        open(os.path.join(job, "state.0.yaml"), "w").write(json.dumps(state))
    before = sorted(os.listdir(job)) if os.path.isdir(job) else None
    proc = run_cli("run", job)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    if before is not None:
        assert sorted(os.listdir(job)) == before  # nothing written, not even a claim


@pytest.mark.parametrize("args, message", [
    (["--lease", "10", "--heartbeat", "5"], "fifth"),
    (["--lease", "-1"], "seconds"),
    (["--max-attempts", "0"], ">= 1"),
    (["--grace", "soon"], "seconds"),
    (["--scratch", "/no/such/dir"], "no such directory"),
])
def test_bad_options_exit_2(tree, args, message):
    job = make_job(tree, "double", x=1)
    proc = run_cli("run", job, *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert read_state(job)["dbdict"]["status"] == "ready"


def test_cmdline_runs_once_and_prints_state(tmp_path):
    proc = run_cli("cmdline", experiment("double"), "x=4", "model.arch=mlp", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    assert state["result"] == 8 and state["model"] == {"arch": "mlp"} and state["dbdict"]["status"] == "done"
    again = run_cli("cmdline", experiment("double"), "x=4", cwd=tmp_path)
    assert again.returncode == 0
    assert len([n for n in os.listdir(tmp_path / "dbdict-cmdline") if n[0] != "."]) == 2  # a fresh job directory each time


def test_help_has_examples():
    for command in ("create", "run", "work", "cmdline", "status", "requeue", "cancel", "show", "logs", "query"):
        proc = run_cli(command, "--help")
        assert proc.returncode == 0, (command, proc.stderr)
        assert "example" in proc.stdout, command
    assert "example" in run_cli("--help", prog="dbdict-query").stdout
    assert run_cli("--help", prog="dbdict-run-job").returncode == 0


def test_every_option_has_help_and_is_in_the_readme():
    """Like sqlite-utils' test_docs: an option without help text, or a command the README
    never shows, fails here."""
    import argparse

    from dbdict_fs.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(COMMANDS)
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    for name, p in sub.choices.items():
        assert f"dbdict {name}" in readme or (name == "query" and "dbdict-query" in readme), name
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help text"


def test_state_too_large_to_store_fails_the_job_readably(tree):
    """Four times: the result (8 MB, over a hundred pipe buffers) comes whole even when the
    experiment's process exits the moment its last byte is in the pipe. A worker that asked
    whether it had exited after reading (not before) took 3 of 4 such ends for a death
    "without returning", once experiments were forks (quick to exit)."""
    for x in range(4):
        job = make_job(tree, "big_state", x=x)
        proc = run_cli("run", job)
        assert proc.returncode == 1, proc.stderr
        state = read_state(job)  # still readable: not corrupt
        assert state["dbdict"]["status"] == "failed" and "cannot be stored" in state["dbdict"]["error"]
        assert "curve" not in state


def test_a_fifo_as_stdout_fails_the_job_instead_of_hanging(tree):
    job = make_job(tree, "double", x=1)
    os.unlink(os.path.join(job, "stdout"))
    os.mkfifo(os.path.join(job, "stdout"))
    proc = run_cli("run", job, timeout=20)
    assert proc.returncode == 1 and "not a regular file" in proc.stderr
    assert read_state(job)["dbdict"]["status"] == "failed"
    logs = run_cli("logs", job, timeout=20)
    assert logs.returncode == 2 and "not a regular file" in logs.stderr


@pytest.mark.parametrize("name", ["dbdict", "dbdict-run-job", "dbdict-query"])
def test_bin_wrappers_work_from_a_checkout(name):
    import subprocess
    import sys

    path = os.path.join(os.path.dirname(__file__), "..", "bin", name)
    proc = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr


# What `run` must not import: each is paid again by every job run one command at a time
# (issue 25), and none is needed to book, run and commit one job. Counted, not timed.
NOT_FOR_RUN = ("dataclasses", "socket", "hashlib", "shutil", "subprocess", "random", "tempfile", "sqlite3",
               "rich", "optuna", "dbdict_fs.query", "dbdict_fs.index", "dbdict_fs.searches",
               "dbdict_fs.create", "dbdict_fs.zygote")


def test_run_imports_only_what_one_job_needs(tree):
    job = make_job(tree, "double", x=5)
    code = ("import json, sys; from dbdict_fs.cli import main; rc = main(); "
            "print(json.dumps([rc, sorted(sys.modules)]))")
    proc = subprocess.run([sys.executable, "-c", code, "run", job, "-q"], capture_output=True, text=True,
                          timeout=120)
    rc, modules = json.loads(proc.stdout.splitlines()[-1])
    assert rc == 0 and read_state(job)["result"] == 10, proc.stderr
    assert "yaml" in modules  # the check of config.yaml ran in this process
    assert [m for m in NOT_FOR_RUN if m in modules] == []

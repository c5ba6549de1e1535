"""Metric histories (DESIGN.md 10): channel.log points committed with the state, fenced,
continued across preemption without duplicated or missing steps. Real worker processes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dbdict_fs import create_jobs, history

from conftest import HERE, pid_gone, read_state, run_cli, wait_for
from procs import proc_state

CLI = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]
EXPS = os.path.join(HERE, "experiments", "history_exps.py")


def make_job(tree, name, **config):
    return create_jobs(tree, [config], f"{EXPS}:{name}").created[0]


def steps_of(rows, metric):
    return [r[1] for r in rows if r[2] == metric]


def raw_points(job):
    out = []
    for name in sorted(os.listdir(job)):
        if name.startswith("history."):
            with open(os.path.join(job, name)) as f:
                out += [json.loads(line) for line in f if line.strip()]
    return out


def test_sigterm_then_resume_gives_every_step_once(tree):
    job = make_job(tree, "curve", steps=60, step_time=0.03, ckpt_every=7)
    worker = subprocess.Popen(CLI + ["work", str(tree), "-q"])
    logged = os.path.join(job, "workdir", "logged")
    assert wait_for(lambda: int(open(logged).read()) >= 10, 60)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 3
    first = history(job)
    stopped = max(steps_of(first, "loss"))
    assert steps_of(first, "loss") == list(range(1, stopped + 1))
    assert read_state(job)["dbdict"]["status"] == "ready"
    assert run_cli("work", tree, "-q").returncode == 0
    rows = history(job)
    for metric in ("loss", "valid_err"):
        assert steps_of(rows, metric) == list(range(1, 61)), metric  # none missing, none twice
    assert all(r[3] == 1.0 / r[1] for r in rows if r[2] == "loss")
    state = read_state(job)
    assert state["loss"] == 1.0 / 60 and state["dbdict"]["status"] == "done"  # latest values
    # the resume started from an older checkpoint, so some steps really were logged twice
    raw = [p["step"] for p in raw_points(job)]
    assert len(raw) > len(set(raw)), "the test did not exercise a re-logged step"
    # a step logged again replaced the earlier point: its value is the resumed run's
    last_run = {}
    for p in raw_points(job):
        last_run[p["step"]] = p["run"]
    assert {r[1]: r[3] for r in rows if r[2] == "run"} == last_run
    assert set(last_run.values()) == {1, 2}


def test_a_killed_and_resumed_job_shows_its_whole_curve(tree):
    """DESIGN 10 rev 4 (issue 23, item 8): the first attempt logs and checkpoints every step
    but never commits; its worker is killed -9. The next attempt resumes from the
    checkpoint and takes over the points the dead attempt had logged: steps 1..60, once."""
    job = make_job(tree, "curve", steps=60, step_time=0.05, ckpt_every=1, flush=True)
    worker = subprocess.Popen(CLI + ["run", job, "-q"])
    try:
        logged = os.path.join(job, "workdir", "logged")
        wait_for(lambda: int(open(logged).read()) >= 10, 60, what="ten steps")
        book = read_state(job)["dbdict"]
        os.killpg(book["pgid"], signal.SIGSTOP)  # the experiment stops at some checkpoint c
        ckpt = int(wait_for(lambda: open(os.path.join(job, "workdir", "ckpt")).read(), 10, what="a checkpoint"))
        wait_for(lambda: any(p["step"] == ckpt for p in raw_points(job)), 30, what="the worker to append step c")
        worker.kill()
        worker.wait()
        wait_for(lambda: pid_gone(book["shepherd"][0]), 30, what="the attempt's shepherd to end it")
    finally:
        worker.kill()
        worker.wait()
    assert "history" not in read_state(job)["dbdict"]  # nothing was committed: no save, no end
    out = run_cli("run", job, "-q")
    assert out.returncode == 0, out.stderr
    rows = history(job)
    assert steps_of(rows, "loss") == list(range(1, 61))
    assert {r[3] for r in rows if r[2] == "run" and r[1] <= ckpt} == {1}  # the dead attempt's points


@pytest.mark.parametrize("relog", [True, False], ids=["thief-logs", "thief-logs-nothing"])
def test_steal_from_sigstopped_worker_hides_its_late_points(tree, relog):
    """A is stopped after its save, having logged more; B steals. Rev 4 (DESIGN 10): B keeps
    A's points as A's file stood when B read it (A's worker is stopped: as it stood at the
    stop), and A's late points, appended once it runs again, never show."""
    lease, beat = 3.0, 0.5
    job = make_job(tree, "saves_then_logs", relog=relog)
    timing = ["--lease", str(lease), "--heartbeat", str(beat)]
    a = subprocess.Popen(CLI + ["run", job, *timing], stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: os.path.exists(os.path.join(job, "workdir", "committed")), 60)
        assert wait_for(lambda: any(p["valid_err"] == -1.0 for p in raw_points(job)), 30)
        a_child = read_state(job)["dbdict"]["pgid"]
        os.kill(a.pid, signal.SIGSTOP)
        wait_for(lambda: proc_state(a.pid) == "T", 10, what="A's worker to stop")
        at_takeover = [(p["step"], p["valid_err"]) for p in raw_points(job) if p["valid_err"] == -1.0]
        # its experiment keeps logging into the pipe until it hears nothing for L/2 and dies
        assert wait_for(lambda: pid_gone(a_child), lease / 2 + 20)
        b = subprocess.run(CLI + ["work", str(tree), "--wait", "-q", *timing], timeout=120)
        assert b.returncode == 0
        assert read_state(job)["dbdict"]["status"] == "done"
        os.kill(a.pid, signal.SIGCONT)
        a.wait(60)
    finally:
        if a.poll() is None:
            os.kill(a.pid, signal.SIGCONT)
            a.kill()
            a.wait()
    late = [p for p in raw_points(job) if p["valid_err"] == -1.0 and p["step"] > max(s for s, _ in at_takeover)]
    assert late, "A's late points were never written: the test shows nothing"
    rows = history(job)
    assert [(r[1], r[3]) for r in rows] == ([(1, 1.0), (2, 0.5), (3, 1.0 / 3)] + at_takeover
                                           + ([(100, 0.5)] if relog else []))


def test_class_form_and_cli_formats(tree):
    job = make_job(tree, "CurveClass", steps=3)
    assert run_cli("run", job, "-q").returncode == 0
    rows = history(job)
    assert [(r[1], r[2], r[3]) for r in rows] == [(0, "acc", 0.0), (1, "acc", 0.1), (2, "acc", 0.2),
                                                   (3, "acc", 0.3)]
    assert read_state(job)["acc"] == 0.0  # the latest value logged
    out = run_cli("history", job, "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert lines[1] == {"path": job, "step": 1, "metric": "acc", "value": 0.1}
    csv = run_cli("history", job, "--format", "csv").stdout.splitlines()
    assert csv[0] == "path,step,metric,value" and len(csv) == 5
    table = run_cli("history", job).stdout
    assert "metric" in table and "acc" in table
    bad = run_cli("history", os.path.join(str(tree), "nope"))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_index_histories(tree):
    jobs = [make_job(tree, "CurveClass", steps=n) for n in (2, 4)]
    for job in jobs:
        assert run_cli("run", job, "-q").returncode == 0
    from dbdict_fs import build_index

    index = build_index(str(tree))
    rows = index.histories()
    assert sorted({r[0] for r in rows}) == sorted(jobs) and len(rows) == 3 + 5
    assert len(index.histories(where="steps = 4")) == 5


def test_history_as_a_pandas_frame(tree):
    pandas = pytest.importorskip("pandas")
    job = make_job(tree, "CurveClass", steps=2)
    assert run_cli("run", job, "-q").returncode == 0
    frame = history(job, frame=True)
    assert isinstance(frame, pandas.DataFrame) and list(frame.columns) == ["path", "step", "metric", "value"]
    assert len(frame) == 3


# ---------------------------------------------------------------- a mutant the suite let live

def test_a_canceled_attempts_points_past_its_last_commit_never_show(tree):
    """(A mutant the suite let live: readers that read a history file past the byte count
    the state commits, or the newest file instead of the one it names.) A saves steps 1..3,
    then keeps logging points it never commits; a `cancel` fences it. Its file holds those
    points, before and after the cancel, but the committed history is steps 1..3 only."""
    job = make_job(tree, "saves_then_logs")
    a = subprocess.Popen(CLI + ["run", job, "--lease", "3", "--heartbeat", "0.5"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.path.exists(os.path.join(job, "workdir", "committed")), 60, what="A's save",
                 detail=lambda: f"exit {a.poll()}")
        wait_for(lambda: any(p["valid_err"] == -1.0 for p in raw_points(job)), 30, what="points past the save")
        out = run_cli("cancel", tree)
        assert out.returncode == 0, out.stderr
        _, err = a.communicate(timeout=60)
        assert a.returncode == 4, err  # fenced by the cancel: it never claims an outcome
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    state = read_state(job)
    assert state["dbdict"]["status"] == "canceled" and state["dbdict"]["history"]["epoch"] == 1
    assert [p["valid_err"] for p in raw_points(job)].count(-1.0) >= 1  # the file holds them
    rows = history(job)
    assert [(r[1], r[3]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]

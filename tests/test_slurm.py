"""`dbdict submit --slurm` against a real single-node SLURM cluster (issue 8).

The session fixture `slurm_cluster` uses the cluster that is running, or starts one with
tests/slurm/start-local-cluster.sh (installs the Debian packages when missing: needs root
and apt-get); otherwise the tests marked `slurm` skip, saying why. The dry-run and
sbatch-missing tests need no cluster.
"""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from dbdict_fs import create_jobs
from dbdict_fs import booking, scheduler, slurm

from conftest import experiment, read_state, run_cli

HERE = os.path.dirname(os.path.abspath(__file__))
START = os.path.join(HERE, "slurm", "start-local-cluster.sh")


def _cli_has_submit():
    from dbdict_fs import cli

    try:
        cli.main(["submit", "--help"])
    except SystemExit as exc:
        return exc.code == 0
    return False


def submit_cmd(tree, *args, env=None):
    """`dbdict submit TREE ...` once cli.py has it, else `python -m dbdict_fs.slurm submit`."""
    if HAS_SUBMIT:
        return run_cli("submit", tree, *args, env=env)
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "dbdict_fs.slurm", "submit", str(tree), *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=full_env)


HAS_SUBMIT = None


@pytest.fixture(scope="module", autouse=True)
def _which_cli():
    global HAS_SUBMIT
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        HAS_SUBMIT = _cli_has_submit()


# ---------------------------------------------------------------- the cluster

def _unusable():
    """None when sbatch can run jobs here, else why not."""
    for tool in ("sbatch", "squeue", "scontrol", "sinfo"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"slurm does not answer ({exc})"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return "slurmctld does not answer"
    if not re.search(r"^(idle|mixed|allocated|completing)", states.stdout, re.M):
        return f"no usable node (sinfo: {' '.join(states.stdout.split()) or 'nothing'})"
    return None


def _our_cluster():
    """Is /etc/slurm/slurm.conf the one start-local-cluster.sh writes?"""
    try:
        with open("/etc/slurm/slurm.conf", encoding="utf-8", errors="replace") as f:
            return "ClusterName=dbdictlocal" in f.read()
    except OSError:
        return False


@pytest.fixture(scope="session")
def slurm_cluster(request):
    if _our_cluster() and os.geteuid() == 0:
        # Its pid files tell at once when the daemons are gone (CI after the session's
        # processes were killed), where `scontrol ping` would wait ~10 s for a dead controller.
        status = subprocess.run(["bash", START, "status"], capture_output=True, text=True, timeout=60)
        why = None if status.returncode == 0 else "its daemons are not running"
    else:
        why = _unusable()
    if why is None:
        return
    if os.environ.get("DBDICT_SLURM_TESTS") == "skip":
        pytest.skip(f"no usable SLURM cluster ({why}); DBDICT_SLURM_TESTS=skip")
    if os.geteuid() != 0 or not (shutil.which("apt-get") or shutil.which("slurmctld")):
        pytest.skip(f"no usable SLURM cluster ({why}), and tests/slurm/start-local-cluster.sh "
                    f"needs root and apt-get to start one")
    t0 = time.monotonic()
    proc = subprocess.run(["bash", START, "start"], capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        pytest.fail(f"tests/slurm/start-local-cluster.sh failed after {took:.0f}s ({why} before):\n"
                    f"{proc.stderr[-3000:]}")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n[test_slurm] started the local SLURM cluster in {took:.1f}s ({why} before)", flush=True)
    still = _unusable()
    if still:
        pytest.fail(f"the local SLURM cluster started but is not usable: {still}")


def squeue_states(job_id):
    """{task id: state} of a job (array tasks as 123_4); {} once SLURM no longer lists it."""
    proc = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%i %T"], capture_output=True, text=True,
                          timeout=30)
    return dict(line.split()[:2] for line in proc.stdout.splitlines() if len(line.split()) >= 2)


def wait_for(predicate, timeout, interval=0.25, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_gone(job_id, timeout):
    wait_for(lambda: not squeue_states(job_id), timeout, 1.0, f"SLURM job {job_id} to finish")


def dbdict_files(tree):
    """What TREE/.dbdict/ holds beside the marker directory `create` makes."""
    d = os.path.join(tree, ".dbdict")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def logs(tree):
    d = os.path.join(tree, ".dbdict", "slurm", "logs")
    out = {}
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        with open(os.path.join(d, name), encoding="utf-8", errors="replace") as f:
            out[name] = f.read()
    return out


def all_logs(tree):
    return "\n".join(f"--- {name}\n{text}" for name, text in logs(tree).items())


SUBMITTED = []


@pytest.fixture(autouse=True)
def _cancel_leftovers():
    """A failed test must not leave tasks holding the node's CPUs for the next ones."""
    yield
    while SUBMITTED:
        job_id = SUBMITTED.pop()
        if squeue_states(job_id):
            subprocess.run(["scancel", job_id], capture_output=True, timeout=60)


def do_submit(tree, *args, env=None):
    """Submit; check the output contract; return (job id, script path)."""
    proc = submit_cmd(tree, "--slurm", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    script, job_id = lines
    SUBMITTED.append(job_id)
    assert re.fullmatch(r"\d+", job_id), proc.stdout
    assert os.path.dirname(script) == os.path.join(os.path.abspath(tree), ".dbdict", "slurm")
    assert os.path.isfile(script) and os.access(script, os.X_OK)
    return job_id, script


def make_jobs(tree, name, configs):
    return create_jobs(tree, configs, experiment(name)).created


def job_status(job):
    try:
        return read_state(job)["dbdict"]["status"]
    except Exception:  # noqa: BLE001 - a listing mid-write: the caller polls again
        return None


def progress(job):
    try:
        with open(os.path.join(job, "workdir", "ckpt")) as f:
            return int(f.read() or 0)
    except (OSError, ValueError):
        return 0


def usr2(task):
    """`scancel --signal=USR2 --batch TASK`: only for a RUNNING task (a pending one makes
    scancel retry for ~95 s and fail)."""
    proc = subprocess.run(["scancel", "--signal=USR2", "--batch", task], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- no cluster needed

def test_dry_run_prints_a_valid_script_and_writes_nothing(tree, tmp_path):
    make_jobs(tree, "double", [{"x": i} for i in range(3)])
    proc = submit_cmd(tree, "--slurm", "--workers", "4", "--time", "2:00:00", "--partition", "gpu",
                      "--cpus-per-task", "2", "--mem", "8G", "--gres", "gpu:1", "--signal-grace", "300",
                      "--dry-run", "--", "--qos=low", "--comment", "two words")
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    assert script.startswith("#!/bin/bash\n")
    for line in ('#SBATCH --array="0-3"', '#SBATCH --signal="B:USR2@300"', "#SBATCH --requeue",
                 '#SBATCH --time="2:00:00"', '#SBATCH --partition="gpu"', '#SBATCH --cpus-per-task="2"',
                 '#SBATCH --mem="8G"', '#SBATCH --gres="gpu:1"', '#SBATCH "--qos=low" "--comment" "two words"',
                 '#SBATCH --open-mode="append"',
                 f'#SBATCH --output="{os.path.abspath(tree)}/.dbdict/slurm/logs/%A_%a.out"'):
        assert line in script.splitlines(), line
    assert f"TREE='{os.path.abspath(tree)}'" in script  # the path has a space and an é: quoted
    assert f"PYTHON={sys.executable}" in script or f"PYTHON='{sys.executable}'" in script
    assert '-m dbdict_fs.cli work "$TREE"' in script
    assert "kill -USR2" in script and "trap 'forward USR2' USR2" in script
    assert "scontrol requeue" in script
    assert dbdict_files(tree) == []  # nothing written beside create's marker
    assert "dry run" in proc.stderr
    path = tmp_path / "check.sh"
    path.write_text(script)
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    proc = submit_cmd(tree, "--slurm", "--per-job", "--workers", "2", "--no-resubmit", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert '#SBATCH --array="0-2%2"' in proc.stdout.splitlines()
    assert "#SBATCH --requeue" not in proc.stdout and 'run "$JOB"' in proc.stdout
    assert "RESUBMIT=0" in proc.stdout
    assert dbdict_files(tree) == []  # nothing written beside create's marker


def test_usage_errors_are_one_line(tree):
    make_jobs(tree, "double", [{"x": 1}])
    for args, words in ((["--workers", "2", "--dry-run"], "--slurm"),
                        (["--slurm", "--dry-run"], "--workers"),
                        (["--slurm", "--workers", "2", "--time", "1", "--signal-grace", "90", "--dry-run"],
                         "signal-grace"),
                        (["--slurm", "--workers", "2", "--time", "soon", "--dry-run"], "--time")):
        proc = submit_cmd(tree, *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr, proc.stderr
    assert dbdict_files(tree) == []  # nothing written beside create's marker


def test_sbatch_missing_or_failing_exits_2_and_leaves_nothing(tree, tmp_path):
    make_jobs(tree, "double", [{"x": 1}])
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = submit_cmd(tree, "--slurm", "--workers", "2", env={"PATH": str(empty)})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "sbatch" in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert dbdict_files(tree) == []  # nothing written beside create's marker

    fake = empty / "sbatch"
    fake.write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid partition name' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    for extra in ([], ["--per-job"]):
        proc = submit_cmd(tree, "--slurm", "--workers", "2", *extra, env={"PATH": str(empty)})
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Invalid partition name" in proc.stderr
        assert dbdict_files(tree) == []  # nothing written beside create's marker

    os.makedirs(os.path.join(tree, ".dbdict", "slurm"))  # an earlier submission's directory stays
    proc = submit_cmd(tree, "--slurm", "--workers", "2", env={"PATH": str(empty)})
    assert proc.returncode == 2
    assert os.listdir(os.path.join(tree, ".dbdict", "slurm")) == []


def test_time_limits_parse_like_sbatch():
    assert slurm.parse_time_limit("10") == 600
    assert slurm.parse_time_limit("1:30") == 90
    assert slurm.parse_time_limit("2:00:00") == 7200
    assert slurm.parse_time_limit("1-0") == 86400
    assert slurm.parse_time_limit("1-2:3") == 86400 + 7200 + 180
    assert slurm.parse_time_limit("1-2:3:4") == 86400 + 7200 + 184
    assert slurm.parse_time_limit("UNLIMITED") is None
    with pytest.raises(slurm.UsageError):
        slurm.parse_time_limit("2h")


def test_job_gone_without_squeue_is_unknown():
    assert scheduler.job_gone("123_4", squeue="/nonexistent/squeue") is None
    assert scheduler.job_gone(None) is None


# ---------------------------------------------------------------- on the cluster

@pytest.mark.slurm
def test_three_workers_run_twenty_jobs_exactly_once(slurm_cluster, tree, tmp_path):
    log = tmp_path / "executions.log"
    jobs = make_jobs(tree, "append_log", [{"i": i, "log": str(log), "sleep": 0.2} for i in range(20)])
    job_id, script = do_submit(tree, "--workers", "3", "--time", "10")
    wait_gone(job_id, 600)  # a busy cluster may start the tasks late: wait for them, not a time
    assert all(job_status(j) == "done" for j in jobs), all_logs(tree)
    lines = log.read_text().split()
    assert sorted(int(i) for i in lines[::2]) == list(range(20))  # every job ran, exactly once
    # how many tasks got work depends on when the cluster started them, not on us
    tasks = {read_state(j)["dbdict"]["cluster_job"] for j in jobs}
    assert tasks and tasks <= {f"{job_id}_{t}" for t in range(3)}, tasks
    assert sorted(logs(tree)) == [f"{job_id}_{t}.out" for t in range(3)]
    assert all("worker exited with code 0" in text for text in logs(tree).values()), all_logs(tree)


@pytest.mark.slurm
def test_usr2_requeues_the_job_which_resumes_from_its_checkpoint(slurm_cluster, tree):
    [job] = make_jobs(tree, "resumable", [{"steps": 60, "step_time": 0.1}])
    job_id, _ = do_submit(tree, "--workers", "1", "--time", "10", "--no-resubmit")
    task = f"{job_id}_0"
    wait_for(lambda: squeue_states(job_id).get(task) == "RUNNING" and progress(job) >= 3, 60,
             what="the experiment to start")
    assert read_state(job)["dbdict"]["cluster_job"] == task
    usr2(task)
    wait_gone(job_id, 60)
    state = read_state(job)
    assert state["dbdict"]["status"] == "ready", all_logs(tree)
    assert state["dbdict"]["returned"] == "incomplete" and state["dbdict"]["priority"] == 2.0
    stopped_at = state["progress"]
    assert 3 <= stopped_at < 60
    text = logs(tree)[f"{task}.out"]
    assert "got SIGUSR2" in text and "worker exited with code 3" in text
    assert "not resubmitting (--no-resubmit)" in text

    job_id2, _ = do_submit(tree, "--workers", "1", "--time", "10")
    wait_gone(job_id2, 60)
    state = read_state(job)
    assert state["dbdict"]["status"] == "done" and state["result"] == 60, all_logs(tree)
    assert state["resumed_from"] >= stopped_at  # from its checkpoint, not from scratch
    assert state["dbdict"]["cluster_job"] == f"{job_id2}_0"


@pytest.mark.slurm
def test_status_shows_slurm_ids_and_job_gone_follows_squeue(slurm_cluster, tree):
    [job] = make_jobs(tree, "sleeper", [{"sleep": 120}])
    job_id, _ = do_submit(tree, "--workers", "1", "--time", "10")
    task = f"{job_id}_0"
    wait_for(lambda: squeue_states(job_id).get(task) == "RUNNING" and job_status(job) == "running"
             and os.path.exists(os.path.join(job, "workdir", "child.pid")), 60, what="the experiment to start")
    assert scheduler.job_gone(task) is False
    assert scheduler.jobs_gone([task, "999999"]) == {task: False, "999999": True}
    assert booking.scheduler_gone([task]) == set()
    status = run_cli("status", tree, "--format", "json")
    # scancel (TERM to the whole job: the user's "stop"): the job is requeued in the tree and
    # the task does not resubmit itself.
    subprocess.run(["scancel", job_id], check=True, timeout=60)
    wait_gone(job_id, 60)
    assert scheduler.job_gone(task) is True
    assert scheduler.job_gone("999999") is True
    assert booking.scheduler_gone([task]) == {task}  # its top claim is still the dead task's
    assert wait_for(lambda: job_status(job) == "ready", 10, what="the job to be ready"), all_logs(tree)
    text = logs(tree)[f"{task}.out"]
    assert "got SIGTERM" in text and "left: resubmitting" not in text and f"requeued {task}" not in text, text
    assert status.returncode == 0, status.stderr
    import json

    running = json.loads(status.stdout)["running"]
    assert [r.get("cluster_job") for r in running] == [task], running


@pytest.mark.slurm
def test_a_killed_task_leaves_its_job_running_until_status_sees_its_task_gone(slurm_cluster, tree):
    """kill -9 of the batch shell and the worker (a node crash): the tree still says running,
    with a fresh heartbeat; squeue says the task is over, so status may call it stale."""
    import signal

    [job] = make_jobs(tree, "sleeper", [{"sleep": 120}])
    job_id, _ = do_submit(tree, "--workers", "1", "--time", "10")
    task = f"{job_id}_0"
    wait_for(lambda: squeue_states(job_id).get(task) == "RUNNING" and job_status(job) == "running"
             and os.path.exists(os.path.join(job, "workdir", "child.pid")), 60, what="the experiment to start")
    worker = read_state(job)["dbdict"]["pid"]
    with open(f"/proc/{worker}/stat") as f:
        batch = int(f.read().rsplit(")", 1)[1].split()[1])
    os.kill(batch, signal.SIGKILL)  # the shell first: it would replace a worker that died alone
    os.kill(worker, signal.SIGKILL)
    wait_gone(job_id, 60)
    assert job_status(job) == "running"  # nobody wrote: the lease (600 s) has not run out
    status = run_cli("status", tree, "--format", "json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"].get("stale") == 1, status.stdout  # booking: task gone


@pytest.mark.slurm
def test_a_kill_9ed_worker_is_replaced_and_its_job_runs_again_within_60s(slurm_cluster, tree):
    """kill -9 of the worker alone (OOM killer style): the task starts a new worker in its
    allocation, which takes the job over by the same-host fast path, at the default lease
    (600 s) and heartbeat (30 s): the job runs again within 60 s, then finishes."""
    import signal

    [job] = make_jobs(tree, "sleeper", [{"sleep": 6}])
    job_id, _ = do_submit(tree, "--workers", "1", "--time", "10")
    task = f"{job_id}_0"
    wait_for(lambda: squeue_states(job_id).get(task) == "RUNNING" and job_status(job) == "running"
             and os.path.exists(os.path.join(job, "workdir", "child.pid")), 60, what="the experiment to start")
    first = read_state(job)["dbdict"]
    os.kill(first["pid"], signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: job_status(job) in ("running", "done") and read_state(job)["dbdict"]["epoch"] > first["epoch"],
             60, 0.25, "the job to run again")
    assert time.monotonic() - killed < 60
    again = read_state(job)["dbdict"]
    assert again["pid"] != first["pid"] and again["cluster_job"] == task
    wait_for(lambda: job_status(job) == "done", 60, 0.25, "the job to finish")
    assert "starting a new one (1 of 3)" in logs(tree)[f"{task}.out"]


@pytest.mark.slurm
def test_resubmit_drains_jobs_that_need_several_allocations(slurm_cluster, tree):
    """Every job is stopped by USR2 at least once; the tasks requeue themselves until done."""
    jobs = make_jobs(tree, "resumable", [{"steps": 50, "step_time": 0.1, "k": k} for k in range(3)])
    job_id, _ = do_submit(tree, "--workers", "2", "--time", "10")
    signaled = {}
    deadline = time.monotonic() + 150
    while squeue_states(job_id):
        assert time.monotonic() < deadline, all_logs(tree)
        tasks = squeue_states(job_id)
        for job in jobs:
            try:
                book = read_state(job)["dbdict"]
            except Exception:  # noqa: BLE001
                continue
            task = book.get("cluster_job")
            if (book["status"] == "running" and not book.get("resumes") and job not in signaled
                    and tasks.get(task) == "RUNNING" and progress(job) >= 5):
                usr2(task)
                signaled[job] = task
        time.sleep(0.3)
    for job in jobs:
        state = read_state(job)
        assert state["dbdict"]["status"] == "done" and state["result"] == 50, all_logs(tree)
        assert state["dbdict"]["resumes"] >= 1 and state["resumed_from"] >= 5
    assert len(signaled) == 3
    text = all_logs(tree)
    assert text.count("runnable job(s) left: resubmitting") >= 2, text
    assert "resubmitted 1 times" in text and "worker exited with code 0" in text


@pytest.mark.slurm
def test_where_requeue_is_refused_the_task_is_submitted_again(slurm_cluster, tree, tmp_path):
    """A site may refuse `scontrol requeue`: then the task is a fresh sbatch of the same script."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text('#!/bin/sh\n[ "$1" = requeue ] && { echo "requeue refused" >&2; exit 1; }\n'
                                   f'exec {shutil.which("scontrol")} "$@"\n')
    (fake / "scontrol").chmod(0o755)
    [job] = make_jobs(tree, "resumable", [{"steps": 40, "step_time": 0.1}])
    job_id, _ = do_submit(tree, "--workers", "1", "--time", "10",
                          env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    task = f"{job_id}_0"
    wait_for(lambda: squeue_states(job_id).get(task) == "RUNNING" and progress(job) >= 3, 60,
             what="the experiment to start")
    usr2(task)
    wait_gone(job_id, 60)
    text = logs(tree)[f"{task}.out"]
    m = re.search(r"submitted (\d+)$", text, re.M)
    assert "scontrol requeue refused: submitting task 0 again" in text and m, text
    SUBMITTED.append(m.group(1))
    wait_gone(m.group(1), 60)
    state = read_state(job)
    assert state["dbdict"]["status"] == "done" and state["result"] == 40, all_logs(tree)
    assert state["dbdict"]["cluster_job"] == f"{m.group(1)}_0" and state["resumed_from"] >= 3
    assert "resubmitted 1 times" in logs(tree)[f"{m.group(1)}_0.out"]


@pytest.mark.slurm
def test_per_job_runs_one_task_per_job_and_resubmits_incomplete_ones(slurm_cluster, tree):
    jobs = make_jobs(tree, "double", [{"x": x} for x in range(3)])
    [again] = make_jobs(tree, "once_incomplete", [{"y": 1}])
    job_id, script = do_submit(tree, "--per-job", "--workers", "2", "--time", "10")
    joblist = script[:-len(".sh")] + ".jobs"
    with open(joblist, encoding="utf-8") as f:
        assert sorted(f.read().splitlines()) == sorted(os.path.abspath(j) for j in jobs + [again])
    wait_gone(job_id, 120)
    for job in jobs:
        state = read_state(job)
        assert state["dbdict"]["status"] == "done" and state["result"] == 2 * state["x"], all_logs(tree)
    state = read_state(again)
    assert state["dbdict"]["status"] == "done" and state["result"] == "resumed", all_logs(tree)
    assert sorted(logs(tree)) == [f"{job_id}_{t}.out" for t in range(4)]
    assert "1 runnable job(s) left: resubmitting" in all_logs(tree)


@pytest.mark.slurm
@pytest.mark.slow
def test_time_limit_warning_stops_and_resubmits_until_done(slurm_cluster, tree):
    """--time 1 with the warning 45 s before: a 80 s job needs two allocations (~2-3 min)."""
    [job] = make_jobs(tree, "resumable", [{"steps": 400, "step_time": 0.2}])
    job_id, _ = do_submit(tree, "--workers", "1", "--time", "1", "--signal-grace", "45", "--grace", "10")
    wait_gone(job_id, 400)
    state = read_state(job)
    assert state["dbdict"]["status"] == "done" and state["result"] == 400, all_logs(tree)
    assert state["dbdict"]["resumes"] >= 1 and state["resumed_from"] > 0
    text = all_logs(tree)
    assert "got SIGUSR2" in text and "requeued" in text


def test_gpus_per_worker_makes_each_task_a_pool_of_its_allocation(tree):
    make_jobs(tree, "double", [{"x": 1}])
    proc = submit_cmd(tree, "--slurm", "--workers", "2", "--gres", "gpu:4", "--gpus-per-worker", "2", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert '"$TREE"' in proc.stdout and " --gpus all --gpus-per-worker 2" in proc.stdout
    proc = submit_cmd(tree, "--slurm", "--per-job", "--gpus-per-worker", "2", "--dry-run")
    assert proc.returncode == 2 and "--per-job" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slurm
def test_a_task_with_gpus_per_worker_runs_one_worker_per_device(slurm_cluster, tree, tmp_path):
    # The local cluster has no GPU: the allocation's devices come from the submitter's
    # CUDA_VISIBLE_DEVICES (sbatch exports the environment), as SLURM sets it with --gres.
    meet = tmp_path / "meet"
    meet.mkdir()
    spec = os.path.join(HERE, "experiments", "pool_exps.py") + ":sees_devices"
    jobs = create_jobs(tree, [{"x": i, "meet": str(meet), "parties": 2} for i in range(4)], spec).created
    job_id, _ = do_submit(tree, "--workers", "1", "--time", "10", "--gpus-per-worker", "1",
                          env={"CUDA_VISIBLE_DEVICES": "0,1"})
    wait_gone(job_id, 600)
    states = [read_state(j) for j in jobs]
    assert all(s["dbdict"]["status"] == "done" for s in states), all_logs(tree)
    assert {s["seen"] for s in states} == {"0", "1"} and all(s["dbdict"]["gpus"] == s["seen"] for s in states)
    assert {s["dbdict"]["cluster_job"] for s in states} == {f"{job_id}_0"}

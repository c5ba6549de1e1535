"""How an attempt starts (issue 25): a forked shepherd, and `work --preload`'s zygote.

With real processes: a preloaded module's global changed by one attempt is unchanged in
the next; a zygote whose imports started a thread refuses to fork and the jobs still run;
and the worker or the zygote killed -9 at each step of an attempt's start (each process
stops itself at its step: the seam DBDICT_TEST_STOP_AT) leaves no process behind and no
job lost.
"""

import os
import signal
import subprocess
import sys
import uuid

import pytest

from dbdict_fs import create_jobs

from conftest import read_state, wait_for
from procs import proc_ppid, proc_state

HERE = os.path.dirname(os.path.abspath(__file__))
MODS = os.path.join(HERE, "experiments", "preload")
EXPS = os.path.join(MODS, "preload_exps.py")
CLI = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]
# A long lease: the L/2 fence (which would also end a lost attempt) must not hide an orphan
# that the worker's death should have ended.
LONG = ["--lease", "120", "--heartbeat", "1"]


def make_jobs(tree, name, n):
    return create_jobs(tree, [{"i": i} for i in range(n)], f"{EXPS}:{name}").created


def env_for(tag, **extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (MODS, os.environ.get("PYTHONPATH")) if p))
    env["DBDICT_TEST_TAG"] = tag  # every process of the test carries it: none may be left
    env.pop("DBDICT_TEST_STOP_AT", None)
    env.update(extra)
    return env


def tagged(tag):
    """Live processes whose environment carries `tag`."""
    found, needle = [], f"DBDICT_TEST_TAG={tag}".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0") and proc_state(int(name)) not in (None, "Z", "X"):
            found.append(int(name))
    return found


def zygote_of(worker):
    for name in os.listdir("/proc"):
        if name.isdigit() and proc_ppid(int(name)) == worker:
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if b"dbdict_fs.zygote" in f.read():
                        return int(name)
            except OSError:
                continue
    return None


def test_a_preloaded_modules_global_changed_by_one_attempt_is_unchanged_in_the_next(tree):
    jobs = make_jobs(tree, "bump", 3)
    tag = uuid.uuid4().hex
    out = subprocess.run(CLI + ["work", str(tree), "--preload", "preload_state"], env=env_for(tag),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    states = [read_state(job) for job in jobs]
    assert [s["dbdict"]["status"] for s in states] == ["done"] * 3, out.stderr
    assert [s["seen"] for s in states] == [0, 0, 0]  # each attempt a fresh fork of the zygote
    zygotes = {s["imported_in"] for s in states}
    assert len(zygotes) == 1 and not zygotes & {s["pid"] for s in states}, states  # imported once, elsewhere
    for job, state in zip(jobs, states):  # what a fresh interpreter would see
        assert os.path.realpath(state["cwd"]) == os.path.realpath(os.path.join(job, "workdir"))
        assert state["jobdir_env"] == os.path.abspath(job)
        with open(os.path.join(job, "stdout")) as f:
            assert f.read().splitlines()[1:] == ["out"]
        with open(os.path.join(job, "stderr")) as f:
            assert f.read().splitlines()[1:] == ["err"]
    wait_for(lambda: not tagged(tag), timeout=30, what="every process of the worker to end")


def test_a_zygote_whose_imports_started_a_thread_refuses_to_fork_and_says_so_once(tree):
    jobs = make_jobs(tree, "threaded", 2)
    tag = uuid.uuid4().hex
    out = subprocess.run(CLI + ["work", str(tree), "--preload", "preload_threads"], env=env_for(tag),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("refuses to fork") == 1 and "2 threads" in out.stderr, out.stderr
    for job in jobs:
        state = read_state(job)
        assert state["dbdict"]["status"] == "done"
        assert state["imported_in"] == state["pid"]  # imported by the experiment itself
    wait_for(lambda: not tagged(tag), timeout=30, what="every process of the worker to end")


def test_a_zygote_preloading_numpy_forks_though_openblas_started_threads_at_import(tree):
    """numpy's OpenBLAS starts a thread per core but one when it is loaded (torch imports
    numpy): the zygote stops them as OpenBLAS does before any fork, so it forks, and each
    experiment's BLAS starts its threads again. On the H200 (16 cores) `--preload torch`
    was refused for this until then."""
    pytest.importorskip("numpy")
    jobs = make_jobs(tree, "blas", 2)
    tag = uuid.uuid4().hex
    out = subprocess.run(CLI + ["work", str(tree), "--preload", "numpy"], env=env_for(tag),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refuses to fork" not in out.stderr, out.stderr
    for job in jobs:
        state = read_state(job)
        assert state["dbdict"]["status"] == "done", out.stderr
        assert state["preloaded"] is True and state["total"] == 300.0 ** 3, state
    wait_for(lambda: not tagged(tag), timeout=30, what="every process of the worker to end")


MODES = {"preload": ["--preload", "preload_state"], "default": [], "fresh": ["--fresh-interpreter"]}
ZYGOTE_STEPS = ("zygote-request", "shepherd-forked", "experiment-started", "experiment-forked")
STEPS = ([(step, "preload") for step in ZYGOTE_STEPS] + [(step, "default") for step in ZYGOTE_STEPS]
         + [("shepherd-forked", "fresh"), ("experiment-started", "fresh")])  # (where the start stops, how)


# Every step with the worker killed; the zygote, where there is one (--preload, and work's default).
KILLS = [(step, mode, victim) for step, mode in STEPS
         for victim in (("worker",) if mode == "fresh" else ("worker", "zygote"))]


@pytest.mark.parametrize("step,mode,victim", KILLS)
def test_kill_9_at_each_step_of_an_attempts_start_leaves_no_orphan_and_loses_no_job(
        tree, tmp_path, step, mode, victim):
    [job] = make_jobs(tree, "bump", 1)
    tag = uuid.uuid4().hex
    marker = str(tmp_path / "stopped")
    args = ["work", str(tree), *LONG] + MODES[mode]
    worker = subprocess.Popen(CLI + args, env=env_for(tag, DBDICT_TEST_STOP_AT=f"{step}:{marker}"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        stopped = int(wait_for(lambda: os.path.exists(marker) and open(marker).read(), timeout=60,
                               what=f"a process to stop at {step}", detail=lambda: f"worker exit {worker.poll()}"))
        wait_for(lambda: proc_state(stopped) == "T", timeout=10, what="it to stop itself")
        target = worker.pid if victim == "worker" else zygote_of(worker.pid)
        assert target, "no zygote"
        os.kill(target, signal.SIGKILL)
        if stopped != target:
            os.kill(stopped, signal.SIGCONT)
        if victim == "worker":
            worker.wait(30)
            wait_for(lambda: not tagged(tag), timeout=30, what="every process of the attempt to end",
                     detail=lambda: f"left: {tagged(tag)}")
            # the job is not lost: the next worker of this host takes it over at once
            again = subprocess.run(CLI + ["work", str(tree), *LONG], env=env_for(tag),
                                   capture_output=True, text=True, timeout=120)
            assert again.returncode == 0, again.stderr
        else:  # the worker goes on: a restarted zygote, or a fresh interpreter meanwhile
            _, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err
        assert read_state(job)["dbdict"]["status"] == "done", read_state(job)["dbdict"]
        wait_for(lambda: not tagged(tag), timeout=30, what="no process left once the worker ended",
                 detail=lambda: f"left: {tagged(tag)}")
    finally:
        for pid in tagged(tag):
            os.kill(pid, signal.SIGKILL)
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_submit_passes_preload_to_its_workers_and_refuses_bad_names(tree):
    from conftest import run_cli

    [job] = make_jobs(tree, "bump", 1)
    proc = run_cli("submit", tree, "--slurm", "--workers", "2", "--dry-run", "--preload", "numpy,torch")
    assert proc.returncode == 0, proc.stderr
    [line] = [line for line in proc.stdout.splitlines() if "-m dbdict_fs.cli work" in line]
    assert "--preload numpy,torch" in line, line
    for bad in (["submit", tree, "--slurm", "--workers", "2", "--dry-run", "--preload", "numpy,,x-y"],
                ["work", tree, "--preload", "a b"]):
        proc = run_cli(*bad)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr and "--preload" in proc.stderr, proc.stderr
    missing = run_cli("work", tree, "--preload", "no_such_module_here")
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        "Error: --preload: cannot import no_such_module_here: ModuleNotFoundError: "
        "No module named 'no_such_module_here'"], missing.stderr
    assert read_state(job)["dbdict"]["status"] == "ready" and read_state(job)["dbdict"]["epoch"] == 0  # not claimed


@pytest.mark.parametrize("threads", [False, True])
def test_a_worker_forks_its_shepherd_only_while_it_has_one_thread(tree, tmp_path, threads):
    """A fork of a threaded process may inherit a lock another thread held, forever: a
    worker with a thread (the Python API called beside a thread pool) starts a fresh
    interpreter as its shepherd instead; both ways run the job."""
    [job] = make_jobs(tree, "bump", 1)
    marker = str(tmp_path / "shepherd")
    code = ("import sys, threading; from dbdict_fs import run_job\n"
            + ("threading.Thread(target=threading.Event().wait, daemon=True).start()\n" if threads else "")
            + "sys.exit(run_job(sys.argv[1]).exit_code)")
    proc = subprocess.Popen([sys.executable, "-c", code, job], stderr=subprocess.PIPE, text=True,
                            env=env_for(uuid.uuid4().hex, DBDICT_TEST_STOP_AT=f"experiment-started:{marker}"))
    try:
        shepherd = int(wait_for(lambda: os.path.exists(marker) and open(marker).read(), timeout=60,
                                what="the shepherd to stop itself", detail=lambda: f"exit {proc.poll()}"))
        wait_for(lambda: proc_state(shepherd) == "T", timeout=10, what="it to stop")
        with open(f"/proc/{shepherd}/cmdline", "rb") as f:
            fresh = b"dbdict_fs.shepherd" in f.read()
        assert proc_ppid(shepherd) == proc.pid and fresh == threads
        os.kill(shepherd, signal.SIGCONT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert read_state(job)["dbdict"]["status"] == "done"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_experiment_finds_the_signal_dispositions_it_always_found(tree, mode):
    """What a fresh `python -m dbdict_fs.child` found before issue 25 (the stop signals
    ignored, SIGHUP its death handler, SIGPIPE and SIGXFSZ ignored as Python sets them, the
    rest default, its own process group), with the shepherd forked, from the default zygote
    and with --preload."""
    [job] = make_jobs(tree, "signals", 1)
    out = subprocess.run(CLI + ["work", str(tree)] + MODES[mode],
                         env=env_for(uuid.uuid4().hex), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    state = read_state(job)
    assert state["signals"] == {"SIGINT": "ign", "SIGTERM": "ign", "SIGUSR1": "ign", "SIGUSR2": "ign",
                                "SIGHUP": "handler", "SIGPIPE": "ign", "SIGXFSZ": "ign", "SIGCHLD": "dfl",
                                "SIGALRM": "dfl", "SIGQUIT": "dfl"}
    assert state["pgid_is_pid"] is True


@pytest.mark.parametrize("mode", ["default", "fresh"])
def test_work_forks_each_experiment_from_a_zygote_unless_asked_for_fresh_interpreters(tree, mode):
    """Without --preload, `work` keeps a zygote that imports nothing of the user's: each
    experiment is a fork of it (an interpreter start saved per attempt, issue 25), a fresh
    fork each time, so what one attempt changes in a module (here json, which every
    experiment has) never reaches the next. --fresh-interpreter starts each in a new
    interpreter instead; the experiments see the same either way."""
    jobs = make_jobs(tree, "how_started", 3)
    tag = uuid.uuid4().hex
    out = subprocess.run(CLI + ["work", str(tree)] + MODES[mode], env=env_for(tag),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "zygote" not in out.stderr, out.stderr
    states = [read_state(job) for job in jobs]
    assert [s["dbdict"]["status"] for s in states] == ["done"] * 3, out.stderr
    assert [s["seen"] for s in states] == [0, 0, 0]
    assert len({s["pid"] for s in states}) == 3
    if mode == "default":
        assert {s["comm"] for s in states} == {"dbdict-child"} and not any(s["fresh"] for s in states), states
    else:
        assert "dbdict-child" not in {s["comm"] for s in states} and all(s["fresh"] for s in states), states
    for job, state in zip(jobs, states):
        assert os.path.realpath(state["cwd"]) == os.path.realpath(os.path.join(job, "workdir"))
        with open(os.path.join(job, "stdout")) as f:
            assert f.read().splitlines()[1:] == ["out"]
    wait_for(lambda: not tagged(tag), timeout=30, what="every process of the worker to end")


@pytest.mark.parametrize("how", ["-c", "-m"])
def test_run_forks_its_one_experiment_from_itself_unless_asked_for_a_fresh_interpreter(tree, tmp_path, how):
    """`run`'s one attempt needs no zygote: the experiment is a fork of the `run` process
    (which imported nothing of the user's), so it pays a fork, not an interpreter start
    (issue 25). It sees what a fresh interpreter shows it: not the command's cwd or script
    directory on sys.path (a module beside the command is not importable), its own pid and
    the workdir as cwd. --fresh-interpreter starts a fresh one instead."""
    jobs = make_jobs(tree, "how_started", 2)
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "beside_the_command.py").write_text("")
    start = {"-c": ["-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"],
             "-m": ["-m", "dbdict_fs.cli"]}[how]
    env = env_for(uuid.uuid4().hex)
    env.pop("PYTHONUNBUFFERED", None)  # the command's own streams are buffered; the experiment's are not
    for job, extra in zip(jobs, ([], ["--fresh-interpreter"])):
        proc = subprocess.run([sys.executable, *start, "run", job, *extra], cwd=here, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    forked, fresh = (read_state(job) for job in jobs)
    assert forked["comm"] == "dbdict-child" and not forked["fresh"], forked
    assert fresh["fresh"] and fresh["comm"] != "dbdict-child", fresh
    for state, job in ((forked, jobs[0]), (fresh, jobs[1])):
        assert state["beside"] is False, state["sys_path"]
        assert str(here) not in state["sys_path"] and "" not in state["sys_path"], state["sys_path"]
        assert os.path.realpath(state["cwd"]) == os.path.realpath(os.path.join(job, "workdir"))
        assert state["dbdict"]["status"] == "done" and state["seen"] == 0
        assert state["unbuffered"] == [True, True]  # PYTHONUNBUFFERED, not the command's own streams
        with open(os.path.join(job, "stdout")) as f:
            assert f.read().splitlines()[1:] == ["out"]
    assert forked["pid"] != forked["dbdict"]["pid"]  # not the run process itself


def test_preload_with_fresh_interpreter_is_refused(tree):
    from conftest import run_cli

    both = run_cli("work", tree, "--preload", "json", "--fresh-interpreter")
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1, both.stderr
    assert "--fresh-interpreter" in both.stderr and "Traceback" not in both.stderr

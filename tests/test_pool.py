"""Local worker pools (`dbdict work TREE --workers N --gpus ...`, DESIGN.md 12), with real
processes: the pool, its workers and their experiments. No GPU is needed: the experiments
record the CUDA_VISIBLE_DEVICES they were given."""

import json
import os
import signal
import subprocess
import sys

import pytest

import procs
from conftest import EXPERIMENTS, pid_gone, read_state, run_cli, wait_for
from dbdict_fs import create_jobs
from dbdict_fs.pool import plan_workers, worker_argv

POOL_EXPS = os.path.join(EXPERIMENTS, "pool_exps.py")


def pool_env(**extra):
    """No GPU of this machine may decide what the tests' made-up device lists mean."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "DBDICT_HOST")}
    env["DBDICT_NVIDIA_SMI"] = "/nonexistent/nvidia-smi"
    env.update(extra)
    return env


def states(tree):
    from conftest import jobdirs

    return {path: read_state(path) for path in jobdirs(tree)}


def worker_pids(tree):
    logs = os.path.join(str(tree), ".dbdict", "workers")
    names = os.listdir(logs) if os.path.isdir(logs) else []
    return sorted(int(n.rsplit("-", 1)[1].split(".")[0]) for n in names if n.endswith(".log"))


def processes_of(tree, pids=()):
    """Live processes that are `pids` or run dbdict_fs code with their cwd inside `tree`."""
    return sorted({p for p in pids if not pid_gone(p)} | set(procs.processes_in(tree)))


class PoolProcess:
    """`dbdict work ...` started in the background (the tests signal it)."""

    def __init__(self, args, cwd, env):
        code = "import sys; from dbdict_fs.cli import main; sys.exit(main())"
        self.err = open(os.path.join(str(cwd), "pool.err"), "w+")
        self.proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.err)

    def output(self):
        self.err.flush()
        with open(self.err.name) as f:
            return f.read()

    def wait(self, timeout=120):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the pool did not exit in {timeout} s:\n{self.output()}") from None


@pytest.fixture
def pools(tree):
    started = []

    def start(args, cwd, env=None):
        p = PoolProcess(args, cwd, env or pool_env())
        started.append(p)
        return p

    yield start
    for p in started:  # an aborted test: the pool killed -9 stops its workers by SIGTERM
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()
        for pid in worker_pids(tree):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.err.close()


def make_jobs(tree, experiment, configs):
    return create_jobs(str(tree), configs, f"{POOL_EXPS}:{experiment}").created


def running_jobs(tree):
    return {p: s for p, s in states(tree).items() if s["dbdict"]["status"] == "running"}


# ---------------------------------------------------------------- the "done when"

def test_three_workers_share_three_gpus_over_thirty_jobs(tree, tmp_path):
    meet = tmp_path / "meet"
    meet.mkdir()
    make_jobs(tree, "sees_devices", [{"x": i, "meet": str(meet), "parties": 3} for i in range(33)])
    proc = run_cli("work", tree, "--gpus", "0,1,2", "--where", "x < 30", cwd=tmp_path, env=pool_env(),
                   timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "pool: 30 done, 0 running, 0 failed; workers 0/3 alive, 0 replaced"
    ran = [s for s in states(tree).values() if s["x"] < 30]
    assert all(s["dbdict"]["status"] == "done" for s in ran)
    # the filter applied to each worker: the jobs it leaves out were never booked
    assert all(s["dbdict"]["status"] == "ready" for s in states(tree).values() if s["x"] >= 30)
    # each job saw exactly one of the three devices, the one its state records; all three were used
    assert all(s["seen"] in ("0", "1", "2") and s["dbdict"]["gpus"] == s["seen"] for s in ran)
    assert {s["seen"] for s in ran} == {"0", "1", "2"}
    # never more than three at once (the pool's three workers)
    events = sorted([(s["t_start"], 1) for s in ran] + [(s["t_end"], -1) for s in ran])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 3
    assert len(worker_pids(tree)) == 3
    assert not os.listdir(os.path.join(str(tree), ".dbdict", "pools"))  # the pool's record went with it
    by_gpu = run_cli("query", tree, "dbdict.gpus=1", "--format", "json", "--columns", "x", cwd=tmp_path)
    assert len(json.loads(by_gpu.stdout)) == sum(s["seen"] == "1" for s in ran)


def test_two_gpus_per_worker_make_two_workers(tree, tmp_path):
    meet = tmp_path / "meet"
    meet.mkdir()
    make_jobs(tree, "sees_devices", [{"x": i, "meet": str(meet), "parties": 2} for i in range(4)])
    proc = run_cli("work", tree, "--gpus", "0,1,2,3", "--gpus-per-worker", "2", cwd=tmp_path, env=pool_env(),
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = [s["seen"] for s in states(tree).values()]
    assert set(seen) == {"0,1", "2,3"}
    assert len(worker_pids(tree)) == 2


def test_a_worker_killed_9_is_replaced_and_its_job_finishes(tree, tmp_path, pools):
    release = tmp_path / "release"
    jobs = make_jobs(tree, "until_released", [{"x": i, "release": str(release)} for i in range(2)])
    pool = pools(["work", tree, "--workers", "2"], tmp_path)
    held = wait_for(lambda: len(running_jobs(tree)) == 2 and running_jobs(tree), 120,
                    what="both workers to run a job", detail=pool.output)
    victim_job = jobs[0]
    victim = held[victim_job]["dbdict"]["pid"]
    # its experiment has started (a kill before that would be a kill of a worker only)
    wait_for(lambda: os.path.exists(os.path.join(victim_job, "workdir", "runs")), 120,
             what="the experiment to start", detail=pool.output)
    assert victim in worker_pids(tree)
    os.kill(victim, signal.SIGKILL)
    # taken over by the replacement, not by waiting for the lease (600 s)
    taken = wait_for(lambda: (s := read_state(victim_job))["dbdict"]["status"] == "running"
                     and s["dbdict"]["pid"] != victim and s, 120, what="the job to be taken over",
                     detail=pool.output)
    assert taken["dbdict"]["pid"] in worker_pids(tree) and len(worker_pids(tree)) == 3
    status = json.loads(run_cli("status", tree, "--format", "json", cwd=tmp_path).stdout)
    assert [(p["workers"], p["alive"], p["started_workers"], p["replaced"]) for p in status["pools"]] == \
        [(2, 2, 3, 1)]
    release.touch()
    assert pool.wait() == 0, pool.output()
    assert "was killed by SIGKILL: replacing it" in pool.output()
    assert pool.output().strip().splitlines()[-1].endswith("workers 0/2 alive, 1 replaced")
    final = read_state(victim_job)
    assert final["dbdict"]["status"] == "done" and final["runs_seen"] == 2
    assert read_state(jobs[1])["dbdict"]["status"] == "done"
    assert processes_of(tree, worker_pids(tree) + [pool.proc.pid]) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_one_signal_stops_the_whole_pool(tree, tmp_path, pools, sig):
    jobs = make_jobs(tree, "until_released", [{"x": i, "release": str(tmp_path / "never")} for i in range(4)])
    pool = pools(["work", tree, "--workers", "2"], tmp_path)
    wait_for(lambda: len(running_jobs(tree)) == 2, 120, what="both workers to run a job", detail=pool.output)
    status = run_cli("status", tree, cwd=tmp_path)
    assert "worker pools:" in status.stdout and "workers 2/2 alive, 2 started, 0 replaced" in status.stdout
    pids = worker_pids(tree) + [pool.proc.pid]
    os.kill(pool.proc.pid, sig)
    assert pool.wait() == 3, pool.output()
    assert pool.output().strip().endswith("(stopped by a signal)")
    after = [read_state(j) for j in jobs]
    assert [s["dbdict"]["status"] for s in after] == ["ready"] * 4
    assert sum(bool(s.get("stopped")) for s in after) == 2  # the two running ones checkpointed
    assert processes_of(tree, pids) == []
    assert json.loads(run_cli("status", tree, "--format", "json", cwd=tmp_path).stdout)["pools"] == []


def test_a_pool_whose_every_job_failed_exits_1(tree, tmp_path):
    create_jobs(str(tree), [{"x": i} for i in range(3)], f"{os.path.join(EXPERIMENTS, 'exps.py')}:fails")
    proc = run_cli("work", tree, "--workers", "2", cwd=tmp_path, env=pool_env())
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("pool: 0 done, 0 running, 3 failed;")


# ---------------------------------------------------------------- input

@pytest.mark.parametrize("args, env, message", [
    (["--workers", "0"], {}, "--workers: expected a whole number >= 1"),
    (["--gpus", "0,1,2,3", "--gpus-per-worker", "3"], {}, "--gpus-per-worker 3 does not divide the 4 GPUs"),
    (["--gpus", "0,5"], {"CUDA_VISIBLE_DEVICES": "0,1"}, "unknown GPU 5"),
    (["--gpus", "all"], {}, "--gpus all: no GPU found"),
    (["--gpus", "0,0"], {}, "GPU 0 is listed twice"),
    (["--gpus-per-worker", "2"], {}, "--gpus-per-worker needs --gpus"),
])
def test_bad_pool_input_is_one_line_and_exit_2(tree, tmp_path, args, env, message):
    make_jobs(tree, "until_released", [{"x": 0, "release": "r"}])
    proc = run_cli("work", tree, *args, cwd=tmp_path, env=pool_env(**env))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], \
        proc.stderr
    assert not os.path.exists(os.path.join(str(tree), ".dbdict", "workers"))


def test_gpus_all_reads_nvidia_smi_or_cuda_visible_devices(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-aa)'\necho 'GPU 1: NVIDIA H200 (UUID: GPU-bb)'\n")
    smi.chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("DBDICT_NVIDIA_SMI", str(smi))
    assert plan_workers(None, "all") == ["0", "1"]
    assert plan_workers(4, "all") == ["0", "1", "0", "1"]  # more workers than GPUs: shared in turn
    assert plan_workers(None, "GPU-bb") == ["GPU-bb"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5,6")  # an allocation's devices come first
    assert plan_workers(None, "all", 2) == ["2,3", "5,6"]
    assert plan_workers(3, None) == [None] * 3


def test_each_worker_gets_the_users_arguments_without_the_pools():
    from dbdict_fs.cli import build_parser

    parser = build_parser(only=("work",))
    work = parser._subparsers._group_actions[0].choices["work"]
    argv = ["--debug", "work", "t", "lr=0.1", "--workers", "3", "--gpus=0,1,2", "--where", "x < 3",
            "--gpus-per", "1", "--max-jobs", "2", "-q", "--wait"]
    assert worker_argv(argv, work) == ["--debug", "work", "t", "lr=0.1", "--where", "x < 3", "--max-jobs", "2",
                                       "--wait"]

"""The whole attempt is fenced (DESIGN rev 3, 5.1 and 5.2), with real processes:
a stopped attempt's late checkpoint rename never reaches the committed workdir, setsid'd
daemons end with their attempt, and a long C call cannot outlive the L/2 fence."""

import os
import signal
import subprocess
import sys

from dbdict_fs import create_jobs

from conftest import read_state, wait_for
from procs import pid_gone

HERE = os.path.dirname(os.path.abspath(__file__))
EXPS = os.path.join(HERE, "experiments", "fence_exps.py")
CLI = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]
SHORT = ["--lease", "3", "--heartbeat", "0.5"]


def job_with(tree, name, **config):
    ctl = os.path.join(os.path.dirname(str(tree)), "ctl")
    os.makedirs(ctl, exist_ok=True)
    job = create_jobs(tree, [dict(config, ctl=ctl)], f"{EXPS}:{name}").created[0]
    return job, ctl


def ctl_file(ctl, name):
    path = os.path.join(ctl, name)
    return open(path).read() if os.path.exists(path) else None


def test_a_stopped_attempts_late_rename_never_changes_the_committed_workdir(tree):
    """Worker, shepherd and experiment of attempt A all stopped (a SLURM suspend, a hung
    mount) with a checkpoint between write and rename; B (another host) steals, runs and
    commits done; A resumes and renames: `workdir/ckpt` stays B's."""
    job, ctl = job_with(tree, "ckpt_in_flight")
    env_a = dict(os.environ, DBDICT_HOST="host-a")
    a = subprocess.Popen(CLI + ["run", job, *SHORT], env=env_a, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ctl_file(ctl, "A-started") and read_state(job)["dbdict"]["status"] == "running",
                 timeout=60)
        exp, helper = map(int, ctl_file(ctl, "A-started").split())
        shepherd = read_state(job)["dbdict"]["shepherd"][0]
        for pid in (a.pid, shepherd):
            os.kill(pid, signal.SIGSTOP)
        os.killpg(exp, signal.SIGSTOP)  # the experiment's group: it and its helper
        b = subprocess.run(CLI + ["work", str(tree), "--wait", *SHORT], env=dict(os.environ, DBDICT_HOST="host-b"),
                           capture_output=True, text=True, timeout=120)
        assert b.returncode == 0, b.stderr
        assert read_state(job)["result"] == "B" and read_state(job)["dbdict"]["status"] == "done"
        assert open(os.path.join(job, "workdir", "ckpt")).read() == "B"
        open(os.path.join(ctl, "go"), "w").close()
        os.kill(helper, signal.SIGCONT)  # the stale attempt's late rename runs first, alone
        assert wait_for(lambda: ctl_file(ctl, "A-renamed") is not None, timeout=30), "A's rename never ran"
        os.killpg(exp, signal.SIGCONT)
        for pid in (shepherd, a.pid):
            os.kill(pid, signal.SIGCONT)
        _, err = a.communicate(timeout=60)
        assert a.returncode != 0, err  # fenced: it neither commits nor claims success
    finally:
        for pid in (a.pid,):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        a.kill()
        a.wait()
    # what people see, and what the next attempt starts from, is still the committed attempt's
    assert open(os.path.join(job, "workdir", "ckpt")).read() == "B"
    state = read_state(job)
    assert state["dbdict"]["status"] == "done" and state["result"] == "B"
    assert os.path.realpath(os.path.join(job, "workdir")) == os.path.join(os.path.realpath(job),
                                                                          state["dbdict"]["workdir"])


def test_a_setsid_daemon_ends_with_its_attempt(tree):
    job, ctl = job_with(tree, "daemon")
    proc = subprocess.run(CLI + ["run", job], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    daemon = int(ctl_file(ctl, "daemon.pid"))
    assert wait_for(lambda: pid_gone(daemon), timeout=20), "a setsid daemon outlived its job"


def test_a_setsid_daemon_dies_with_a_kill_9ed_worker_before_the_job_runs_again(tree):
    job, ctl = job_with(tree, "daemon", sleep=60)
    worker = subprocess.Popen(CLI + ["run", job], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ctl_file(ctl, "daemon.pid"), timeout=60)
        daemon = int(ctl_file(ctl, "daemon.pid"))
        assert not pid_gone(daemon)
        worker.kill()
        worker.wait()
        assert wait_for(lambda: pid_gone(daemon), timeout=20), "the daemon outlived its kill -9ed worker"
    finally:
        worker.kill()


def test_a_long_c_call_cannot_outlive_the_fence_of_a_stopped_worker(tree):
    """The experiment holds its GIL in one C call; its worker is SIGSTOPped: the shepherd
    (which runs no experiment code) ends it about L/2 later."""
    job, ctl = job_with(tree, "long_c_call")
    worker = subprocess.Popen(CLI + ["run", job, "--lease", "2", "--heartbeat", "0.4"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ctl_file(ctl, "exp.pid"), timeout=60)
        exp = int(ctl_file(ctl, "exp.pid"))
        os.kill(worker.pid, signal.SIGSTOP)
        assert wait_for(lambda: pid_gone(exp), timeout=15), "the experiment outlived the fence"
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        worker.kill()
        worker.wait()

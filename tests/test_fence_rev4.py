"""DESIGN revision 4, 5.1 and 5.2 (issue 23, items 5-7): with real processes, no write of an
earlier attempt reaches the committed workdir, whoever fenced it and however it was left.

5. a requeue or cancel from another host between a stopped holder and the next run: the
   next attempt does not reuse the stopped holder's directory (the command's own exited
   process proves nothing about the holder);
6. the shepherd killed -9 (the OOM killer): its attempt's setsid daemon does not write into
   the next attempt's directory;
7. a steal from a stopped holder shares no inode with it: a late in-place rewrite
   (`torch.save`'s O_TRUNC) of the old attempt never changes the committed checkpoint.
"""

import os
import shutil
import signal
import subprocess

import pytest

from conftest import read_state, wait_for
from procs import pid_gone, proc_state
from test_fence import CLI, SHORT, ctl_file, job_with


def stop_attempt(job, ctl, proc):
    """SIGSTOP worker, shepherd and the experiment's group of a running attempt (a SLURM
    suspend, a hung mount); returns (experiment pid, its helper's pid, shepherd pid)."""
    wait_for(lambda: ctl_file(ctl, "A-started") and read_state(job)["dbdict"]["status"] == "running",
             timeout=60, what="attempt A to start", detail=lambda: f"exit {proc.poll()}")
    exp, helper = map(int, ctl_file(ctl, "A-started").split())
    shepherd = read_state(job)["dbdict"]["shepherd"][0]
    for pid in (proc.pid, shepherd):
        os.kill(pid, signal.SIGSTOP)
    os.killpg(exp, signal.SIGSTOP)
    return exp, helper, shepherd


def resume_late_write(ctl, proc, exp, helper, shepherd, marker):
    """Let the stopped attempt's helper do its late write alone, then resume the rest."""
    open(os.path.join(ctl, "go"), "w").close()
    os.kill(helper, signal.SIGCONT)
    wait_for(lambda: ctl_file(ctl, marker) is not None, timeout=30, what=f"the stale attempt's {marker}")
    os.killpg(exp, signal.SIGCONT)
    for pid in (shepherd, proc.pid):
        os.kill(pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err  # fenced: it never claims success


def host(name):
    return dict(os.environ, DBDICT_HOST=name)


def cli(*args, env=None):
    out = subprocess.run(CLI + list(args), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out


@pytest.fixture
def attempt_a(procs_to_end):
    def start(job):
        a = subprocess.Popen(CLI + ["run", job, *SHORT], env=host("host-a"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        procs_to_end.append(a)
        return a
    return start


def committed(job):
    state = read_state(job)
    assert os.path.realpath(os.path.join(job, "workdir")) == os.path.join(os.path.realpath(job),
                                                                          state["dbdict"]["workdir"])
    return state


def namespace_pids(proc):
    """Real pid -> pid inside the namespace, of every process in the pid namespace that
    `unshare --pid --fork` (proc) made."""
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
        first = int(f.read().split()[0])
    ns = os.readlink(f"/proc/{first}/ns/pid")
    found = {}
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.readlink(f"/proc/{name}/ns/pid") == ns:
                with open(f"/proc/{name}/status") as f:
                    nspid = next(line for line in f if line.startswith("NSpid:")).split()
                found[int(name)] = int(nspid[-1])
        except (OSError, StopIteration):
            continue
    return found


@pytest.mark.parametrize("commands", [[["requeue", "--status", "running", "--force"]],
                                      [["cancel"], ["requeue"]]], ids=["requeue-force", "cancel-requeue"])
def test_a_command_between_a_stopped_holder_and_the_next_run_proves_nothing(tree, commands):
    """Item 5: A runs on host a (its own pid namespace: its pids mean nothing on host b) and
    is stopped with a checkpoint rename in flight; on host b a person requeues the job (or
    cancels, then requeues it) and runs it. The requeue's process has exited on host b and
    A's pids are not host b's: neither proves A gone, so B must not start in A's directory,
    and A's late rename leaves the committed `ckpt` B's."""
    job, ctl = job_with(tree, "ckpt_in_flight")
    a = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", '"$@"', "sh",
                          *CLI, "run", job, *SHORT], env=host("host-a"), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    stopped = []
    try:
        wait_for(lambda: ctl_file(ctl, "A-started") and read_state(job)["dbdict"]["status"] == "running",
                 timeout=60, what="attempt A to start", detail=lambda: f"exit {a.poll()}")
        pids = namespace_pids(a)
        helper = int(ctl_file(ctl, "A-started").split()[1])
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        for command in commands:
            cli(*command, str(tree), env=host("host-b"))
        cli("work", str(tree), *SHORT, env=host("host-b"))
        assert read_state(job)["result"] == "B" and open(os.path.join(job, "workdir", "ckpt")).read() == "B"
        open(os.path.join(ctl, "go"), "w").close()
        os.kill(next(real for real, inside in pids.items() if inside == helper), signal.SIGCONT)
        wait_for(lambda: ctl_file(ctl, "A-renamed") is not None, timeout=30, what="the stale attempt's rename")
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        _, err = a.communicate(timeout=60)
        assert a.returncode != 0, err  # fenced: it never claims success
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        a.kill()
        a.wait()
    assert open(os.path.join(job, "workdir", "ckpt")).read() == "B"
    assert committed(job)["dbdict"]["status"] == "done"


def test_a_steal_shares_no_inode_with_the_stopped_holder(tree, attempt_a):
    """Item 7: B steals from a stopped A and rewrites model.pt in place, as torch.save does;
    A's helper, resumed late, rewrites its model.pt in place too: B's stays B."""
    job, ctl = job_with(tree, "model_in_place")
    a = attempt_a(job)
    stopped = stop_attempt(job, ctl, a)
    cli("work", str(tree), "--wait", *SHORT, env=host("host-b"))
    model = os.path.join(job, "workdir", "model.pt")
    assert read_state(job)["result"] == "B" and open(model, "rb").read() == b"B"
    resume_late_write(ctl, a, *stopped, "A-rewrote")
    assert open(model, "rb").read() == b"B"
    state = committed(job)
    assert os.stat(model).st_nlink == 1 and state["dbdict"]["status"] == "done"


def test_a_clean_incomplete_return_still_resumes_in_place(tree):
    """The O(1) resume stays for a holder known gone: an INCOMPLETE return, whose shepherd
    saw every process end, is resumed in the same directory."""
    from conftest import experiment, run_cli

    from dbdict_fs import create_jobs

    job = create_jobs(tree, [{"x": 1}], experiment("once_incomplete")).created[0]
    assert run_cli("run", job).returncode == 3
    first = read_state(job)["dbdict"]
    assert first["ended"] == first["epoch"]
    assert run_cli("run", job).returncode == 0
    assert read_state(job)["dbdict"]["workdir"] == first["workdir"]


def test_a_daemon_of_an_attempt_whose_shepherd_was_killed_never_writes_the_next_workdir(tree):
    """Item 6: the OOM killer kills the shepherd; the experiment dies with it, but its setsid
    daemon lives on, appending to daemon.log in its cwd. The worker requeues the job; the
    next attempt must not start in that directory in place."""
    job, ctl = job_with(tree, "daemon_once")
    daemon = None
    worker = subprocess.Popen(CLI + ["run", job], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        daemon = int(wait_for(lambda: ctl_file(ctl, "daemon.pid"), timeout=60, what="the daemon"))
        wait_for(lambda: read_state(job)["dbdict"]["status"] == "running", timeout=30, what="the running state")
        os.kill(read_state(job)["dbdict"]["shepherd"][0], signal.SIGKILL)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 3, err  # the experiment died with its shepherd: requeued
        assert not pid_gone(daemon)
        cli("run", job)
        state = committed(job)
        assert state["result"] == "ok"
        workdir = os.path.realpath(os.path.join(job, "workdir"))
        assert os.path.realpath(f"/proc/{daemon}/cwd") != workdir
        log = os.path.join(workdir, "daemon.log")
        before = open(log).read() if os.path.exists(log) else ""
        theirs = f"/proc/{daemon}/cwd/daemon.log"
        grown = len(open(theirs).read()) + 5
        wait_for(lambda: len(open(theirs).read()) >= grown, timeout=30, what="the daemon to write on")
        assert (open(log).read() if os.path.exists(log) else "") == before
    finally:
        worker.kill()
        worker.wait()
        if daemon:
            try:
                os.kill(daemon, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_scratch_sync_back_longer_than_half_the_lease_does_not_time_out_the_save(tree, tmp_path):
    """Item 10: with --scratch, the save's sync-back of the checkpoint stalls in one copy call
    for longer than L/2 (strace holds the worker's sendfile / copy_file_range calls 2.5 s,
    L/2 = 1.5 s): the worker keeps its claim, its shepherd and its experiment hearing from
    it, the save succeeds and the job is done, with the checkpoint in the workdir."""
    if shutil.which("strace") is None:
        pytest.fail("strace is missing: apt-get install strace (.ci/run installs it)")
    job, ctl = job_with(tree, "scratch_save")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    calls = "sendfile,copy_file_range"
    out = subprocess.run(["strace", "-qq", "-o", str(tmp_path / "trace"), "-e", f"trace={calls}",
                          "-e", f"inject={calls}:delay_enter=2500000",
                          *CLI, "run", job, "--scratch", str(scratch), *SHORT],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "copy_file_range" in open(tmp_path / "trace").read() or "sendfile" in open(tmp_path / "trace").read()
    state = committed(job)
    assert state["saved"] is True and state["dbdict"]["status"] == "done"
    assert open(os.path.join(job, "workdir", "ckpt")).read() == "saved"


# ---------------------------------------------------------------- checks a mutation run found untested

SEAM = "DBDICT_TEST_STOP_BEFORE_RENAME"


def stopped_at(marker, proc):
    """`proc` wrote `marker` (its pid) at a seam and stopped itself there; its pid."""
    pid = int(wait_for(lambda: os.path.exists(marker) and open(marker).read(), timeout=60,
                       what=f"the seam {os.path.basename(marker)}", detail=lambda: f"exit {proc.poll()}"))
    wait_for(lambda: proc_state(pid) == "T", timeout=10, what="the process to stop itself")
    return pid


def test_a_command_claim_that_wrote_nothing_is_not_an_attempt(tree, tmp_path):
    """A `cancel` killed -9 between its claim and its state leaves claim.1 with no state;
    the next run (same host: the command's process is gone) counts only run claims, so
    with --max-attempts 1 it runs the job instead of failing it as lost once."""
    job, _ = job_with(tree, "scratch_save")
    marker = str(tmp_path / "cancel-linked")
    cancel = subprocess.Popen(CLI + ["cancel", str(tree)], env=dict(os.environ, **{SEAM: f"write:canceled:{marker}"}),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        stopped_at(marker, cancel)
    finally:
        cancel.kill()
        cancel.wait()
    assert sorted(n for n in os.listdir(job) if n.startswith("claim.")) == ["claim.1"]
    run = subprocess.run(CLI + ["run", job, "--max-attempts", "1"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    book = read_state(job)["dbdict"]
    assert book["status"] == "done" and book["attempts"] == 1


def traced_pid(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("TracerPid:")).split()[1])


def test_a_same_host_steal_waits_for_the_shepherd(tree, tmp_path):
    """The worker is killed -9 while its shepherd is slow to end the attempt (strace holds
    its first kill() call): worker and experiment are gone, its setsid daemon is not.
    `dbdict run` on the same host must not take the job (exit 4) until the shepherd has
    finished and exited."""
    if shutil.which("strace") is None:
        pytest.fail("strace is missing: apt-get install strace (.ci/run installs it)")
    job, ctl = job_with(tree, "daemon_once")
    worker = subprocess.Popen(CLI + ["run", job], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trace = tmp_path / "shepherd.strace"
    tracer = None
    try:
        daemon = int(wait_for(lambda: ctl_file(ctl, "daemon.pid"), timeout=60, what="the daemon"))
        book = wait_for(lambda: read_state(job)["dbdict"]["status"] == "running" and read_state(job)["dbdict"],
                        timeout=30, what="the running state")
        shepherd = book["shepherd"][0]
        tracer = subprocess.Popen(["strace", "-qq", "-o", str(trace), "-p", str(shepherd), "-e", "trace=kill",
                                   "-e", "inject=kill:delay_enter=120000000"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: traced_pid(shepherd) == tracer.pid, timeout=30, what="strace to attach")
        worker.kill()
        worker.wait()
        wait_for(lambda: "kill(" in trace.read_text(), timeout=30, what="the shepherd's held kill()")
        wait_for(lambda: pid_gone(book["pgid"]), timeout=30, what="the experiment to die with its worker")
        early = subprocess.run(CLI + ["run", job], capture_output=True, text=True, timeout=120)
        assert early.returncode == 4, early.stderr
        assert not pid_gone(daemon) and read_state(job)["dbdict"]["epoch"] == 1
        tracer.kill()  # the kernel lets the shepherd go: it ends the attempt, then exits
        tracer.wait()
        wait_for(lambda: pid_gone(shepherd), timeout=30, what="the shepherd to end the attempt")
        assert pid_gone(daemon)
        cli("run", job)
        assert read_state(job)["result"] == "ok"
    finally:
        if tracer is not None:
            tracer.kill()
            tracer.wait()
        worker.kill()
        worker.wait()


def test_the_workdir_link_is_repointed_only_after_the_running_commit(tree, tmp_path, attempt_a):
    """B steals from a stopped A and is stopped itself at its `running` state write, its
    copy built: `workdir` still names the committed (A's) directory, which the state names."""
    job, ctl = job_with(tree, "model_in_place")
    a = attempt_a(job)
    stop_attempt(job, ctl, a)
    marker = str(tmp_path / "b-before-running")
    b = subprocess.Popen(CLI + ["work", str(tree), "--wait", *SHORT],
                         env=dict(host("host-b"), **{SEAM: f"write:running:{marker}"}),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        stopped_at(marker, b)
        state = read_state(job)
        assert state["dbdict"]["epoch"] == 1 and os.path.isdir(os.path.join(job, "workdir.2"))
        assert os.readlink(os.path.join(job, "workdir")) == state["dbdict"]["workdir"] != "workdir.2"
    finally:
        b.kill()
        b.wait()


@pytest.mark.parametrize("where", ["save", "end"])
def test_a_canceled_scratch_attempt_syncs_nothing_back(tree, tmp_path, where):
    """A --scratch attempt (no heartbeat due: the default lease) is canceled while its
    experiment has a new file in scratch; then the experiment saves (`save`) or returns
    (`end`). The worker looks for a newer claim before it syncs: the canceled job's
    committed workdir gets nothing."""
    job, ctl = job_with(tree, "late_on_go", save=where == "save")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    worker = subprocess.Popen(CLI + ["run", job, "--scratch", str(scratch)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ctl_file(ctl, "ready") and read_state(job)["dbdict"]["status"] == "running",
                 timeout=60, what="the experiment", detail=lambda: f"exit {worker.poll()}")
        cli("cancel", str(tree))
        open(os.path.join(ctl, "go"), "w").close()
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 4, err
    finally:
        worker.kill()
        worker.wait()
    state = committed(job)
    assert state["dbdict"]["status"] == "canceled"
    assert not any(os.path.exists(os.path.join(job, n, "late")) for n in os.listdir(job) if n.startswith("workdir"))


def test_a_save_after_a_newer_claim_is_refused(tree, tmp_path):
    """A cancel is stopped between its claim and its state; the experiment then saves. The
    worker looks for a newer claim before writing: nothing is written under the old claim
    (its running state.1 stays as it was) and the save is refused."""
    job, ctl = job_with(tree, "late_on_go", save=True)
    worker = subprocess.Popen(CLI + ["run", job], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker = str(tmp_path / "cancel-linked")
    cancel = None
    try:
        wait_for(lambda: ctl_file(ctl, "ready") and read_state(job)["dbdict"]["status"] == "running",
                 timeout=60, what="the experiment", detail=lambda: f"exit {worker.poll()}")
        before = open(os.path.join(job, "state.1.yaml")).read()
        cancel = subprocess.Popen(CLI + ["cancel", str(tree)], env=dict(os.environ, **{SEAM: f"write:canceled:{marker}"}),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stopped_at(marker, cancel)
        open(os.path.join(ctl, "go"), "w").close()
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 4, err
        assert open(os.path.join(job, "state.1.yaml")).read() == before
    finally:
        if cancel is not None:
            cancel.kill()
            cancel.wait()
        worker.kill()
        worker.wait()


def test_a_scratch_sync_back_checks_the_claim_before_every_file(tree, tmp_path):
    """(A mutant the suite let live: a --scratch sync-back that copies every file without
    asking, before each file and chunk, whether the worker still holds the job; the check
    the worker makes once before the sync did not notice.) The save's sync-back copies `a`,
    then `b`; strace holds the last copy call of `a` 6 s, and a `cancel` is committed
    meanwhile (the worker's sync keeper sees it at its next heartbeat). `b` is never synced
    into the canceled job's committed workdir."""
    if shutil.which("strace") is None:
        pytest.fail("strace is missing: apt-get install strace (.ci/run installs it)")
    job, ctl = job_with(tree, "scratch_two_files")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    trace = str(tmp_path / "trace")
    # copy_file_range call 1 copies a's 5 bytes; call 2 (end of file) is the one held.
    worker = subprocess.Popen(["strace", "-qq", "-o", trace, "-e", "trace=copy_file_range",
                               "-e", "inject=copy_file_range:delay_enter=6000000:when=2",
                               *CLI, "run", job, "--scratch", str(scratch), *SHORT],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wdir = wait_for(lambda: read_state(job)["dbdict"].get("workdir"), timeout=60, what="the running state",
                        detail=lambda: f"exit {worker.poll()}")
        wpath = os.path.join(job, wdir)

        def copying_a():
            return [n for n in os.listdir(wpath) if n.startswith(".tmp.a.")]
        wait_for(copying_a, timeout=60, what="the sync-back of `a`", detail=lambda: f"exit {worker.poll()}")
        cli("cancel", str(tree))
        if not copying_a() or "copy_file_range" not in open(trace).read():
            pytest.fail("the cancel was not committed while the copy of `a` was held: the test shows nothing")
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 4, err
    finally:
        worker.kill()
        worker.wait()
    state = committed(job)
    assert state["dbdict"]["status"] == "canceled"
    assert not any(os.path.lexists(os.path.join(job, n, "b")) for n in os.listdir(job) if n.startswith("workdir"))


def test_a_clean_incomplete_return_resumes_in_place_after_commands_too(tree):
    """(A mutant the suite let live: clean_start taking a command's claim for the last run
    claim, so `ended` never names it and every attempt after a cancel or requeue pays a
    byte copy.) An INCOMPLETE return whose shepherd saw every process end, then a `cancel`
    and a `requeue` (two command claims, whose exited processes wrote nothing in the
    workdir): the next attempt still resumes in the same directory, in O(1)."""
    from conftest import experiment, run_cli

    from dbdict_fs import create_jobs

    job = create_jobs(tree, [{"x": 1}], experiment("once_incomplete")).created[0]
    assert run_cli("run", job).returncode == 3
    first = read_state(job)["dbdict"]
    assert first["ended"] == first["epoch"]
    cli("cancel", str(tree))
    cli("requeue", str(tree))
    book = read_state(job)["dbdict"]
    assert (book["status"], book["epoch"]) == ("ready", first["epoch"] + 2)
    assert run_cli("run", job).returncode == 0
    state = committed(job)
    assert state["dbdict"]["status"] == "done" and state["dbdict"]["workdir"] == first["workdir"]

"""Adversarial review (a helper session) of discovery's final marks and priority hints (DESIGN.md 4.1, design 9.e).

Each test is one interleaving of real processes (workers, commands) over real files that
leaves a runnable job hidden from every later `dbdict work`, or a hint leading outside the
tree. Where a process must be caught between two of its steps, it runs under
`strace -P <one path> --inject=openat:delay_enter=..:delay_exit=..`: only the open that
creates that one mark is held, everything else runs at full speed. The tests wait for
conditions (the strace line of the held call, the mark's appearance), never for fixed times.

The docstrings tell each interleaving as it broke the first design of the marks (whose
`unmark_final` and `mark_final_dir` undid marks by unlinking them); docs/design.md 9.e says
what replaced it, and these tests are what it must keep passing.
"""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from dbdict_fs import jobdir as jd
from dbdict_fs.create import create_jobs
from dbdict_fs.discovery import mark_path

from conftest import experiment, pid_gone, run_cli, wait_for

@pytest.fixture
def strace_required():
    if shutil.which("strace") is None:
        pytest.fail("strace is missing: apt-get install strace (.ci/run installs it)")


needs_strace = pytest.mark.usefixtures("strace_required")
HOLD = 120_000_000  # µs: "forever" for a held call (the test releases or kills the process)
# µs: the window in which the test's command runs before the held call; a test whose command
# misses it fails (a skip would hide that the interleaving went untested on a loaded machine)
ENTER = 30_000_000


def status(job):
    return jd.read_latest_state(str(job))[1]["dbdict"]["status"]


def executions(log):
    return len(open(log).read().splitlines()) if os.path.exists(log) else 0


def traced_work(tree, hold_path, trace_out, enter_us=ENTER, exit_us=HOLD):
    """`dbdict work TREE` whose open of `hold_path` waits enter_us before the call and
    exit_us after it (the file then exists, the process has not seen the call return)."""
    code = "import sys; from dbdict_fs.cli import main; sys.exit(main())"
    return subprocess.Popen(
        ["strace", "-f", "-qq", "-o", str(trace_out), "-P", str(hold_path), "-e", "trace=openat",
         "-e", f"inject=openat:delay_enter={enter_us}:delay_exit={exit_us}",
         sys.executable, "-c", code, "work", str(tree)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def tracee_of(strace_proc):
    with open(f"/proc/{strace_proc.pid}/task/{strace_proc.pid}/children") as f:
        return int(f.read().split()[0])


def held_at(trace_out, hold_path):
    """The traced process has entered the held open (strace prints the call at entry)."""
    return os.path.exists(trace_out) and os.path.basename(str(hold_path)) in open(trace_out).read()


def test_create_in_a_new_subdirectory_of_a_marked_directory_is_found(tree, tmp_path):
    """Interleaving: a worker finishes TREE/g1/s1/j1 and its walk marks s1 (in g1) and g1 (in
    TREE). `create` then adds TREE/g1/s2/j2: makedirs makes g1/s2, the rename puts j2 in it,
    and unmark_final(j2) unlinks g1/s2/.final.j2 (absent) and g1/.final.s2 (absent: s2 is new)
    and stops there, "at the first level without a mark": TREE/.final.g1 stays, and every walk
    skips g1 from the tree's listing. j2 is ready and never runs (no process was paused)."""
    log = tmp_path / "log"
    name = "{g}/{s}/j{i}"
    create_jobs(str(tree), [dict(i=1, g="g1", s="s1", log=str(log))], experiment("append_log"), name=name)
    assert run_cli("work", tree).returncode == 0 and executions(log) == 1
    assert os.path.exists(mark_path(tree / "g1"))  # the walk marked the finished directory
    [j2] = create_jobs(str(tree), [dict(i=2, g="g1", s="s2", log=str(log))], experiment("append_log"),
                       name=name).created
    assert status(j2) == "ready"
    out = run_cli("work", tree)
    assert executions(log) == 2, (
        f"the new ready job {j2} was not run: {out.stderr.strip()!r}; marks left: "
        f"{sorted(p for p in os.listdir(tree) if p.startswith('.final.'))}")


@needs_strace
def test_a_worker_killed_between_its_mark_and_its_relisting_hides_a_requeued_job(tree, tmp_path):
    """Interleaving (default layout, one job):
    1. worker A commits done at epoch E and calls mark_final(J, E); held before the open;
    2. `dbdict requeue --force` links claim.E+1, unmark_final(J) finds no mark, writes ready;
    3. A's open creates .final.J (held after the call: A has not re-listed yet);
    4. A is killed (kill -9): its re-listing, which would see claim.E+1 and take the mark
       back, never happens. J is ready, marked, and nobody will ever remove the mark: every
       `dbdict work TREE` (with or without --wait) says "no runnable job"."""
    log = tmp_path / "log"
    [job] = create_jobs(str(tree), [dict(i=1, log=str(log))], experiment("append_log")).created
    mark = mark_path(job)
    trace_out = tmp_path / "a.strace"
    worker = traced_work(tree, mark, trace_out)
    try:
        wait_for(lambda: held_at(trace_out, mark), timeout=60, what="worker A at the open of its mark")
        assert status(job) == "done" and not os.path.exists(mark)
        assert run_cli("requeue", tree, "--force").returncode == 0
        if os.path.exists(mark):
            pytest.fail(f"the requeue took longer than the strace window ({ENTER / 1e6:g} s): "
                        f"the interleaving was not tested")
        assert status(job) == "ready"
        wait_for(lambda: os.path.exists(mark), timeout=60, what="worker A's mark")
        tracee = tracee_of(worker)
        os.kill(tracee, signal.SIGKILL)  # pending: delivered before A's next system call
        worker.kill()  # strace, so that the kernel lets A go (and die)
        worker.wait(30)
        wait_for(lambda: pid_gone(tracee), timeout=30, what="worker A to die")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    out = run_cli("work", tree)
    assert executions(log) == 2, (
        f"the requeued job {job} (status {status(job)}) was not run: {out.stderr.strip()!r}; "
        f"mark still there: {os.path.exists(mark)}")


@needs_strace
def test_a_directory_mark_taken_back_leaves_the_mark_made_above_it(tree, tmp_path):
    """Interleaving (three levels, TREE/g1/s1/j1, two walkers, nobody killed):
    1. j1 is done and marked (`dbdict run`): s1/.final.j1 only;
    2. walker W2 lists s1 (every entry marked) and calls mark_final_dir(s1); held before
       the open of g1/.final.s1;
    3. `dbdict requeue --force` j1: unlinks s1/.final.j1, finds no g1/.final.s1, stops;
    4. W2 creates g1/.final.s1 (held after the call, before its re-listing of s1);
    5. walker W1 lists g1: its only entry s1 is marked, so it marks g1 in TREE (its
       re-listing of g1 sees .final.s1 and keeps TREE/.final.g1); W1 exits;
    6. W2 resumes: its re-listing sees j1 unmarked and takes back g1/.final.s1 -- only that
       one (mark_final_dir's take-back is a bare unlink, not unmark_final).
    Left: TREE/.final.g1 over an unmarked s1 with a ready job. The next requeue's or
    create's unmark_final would stop at g1/.final.s1 (absent) too: j1 never runs again."""
    log = tmp_path / "log"
    [job] = create_jobs(str(tree), [dict(i=1, g="g1", s="s1", log=str(log))], experiment("append_log"),
                        name="{g}/{s}/j{i}").created
    assert run_cli("run", job).returncode == 0 and executions(log) == 1
    dir_mark = mark_path(os.path.dirname(job))  # TREE/g1/.final.s1
    assert not os.path.exists(dir_mark)
    trace_out = tmp_path / "w2.strace"
    w2 = traced_work(tree, dir_mark, trace_out)
    try:
        wait_for(lambda: held_at(trace_out, dir_mark), timeout=60, what="W2 at the open of g1/.final.s1")
        assert run_cli("requeue", tree, "--force").returncode == 0 and status(job) == "ready"
        if os.path.exists(dir_mark):
            pytest.fail(f"the requeue took longer than the strace window ({ENTER / 1e6:g} s): "
                        f"the interleaving was not tested")
        wait_for(lambda: os.path.exists(dir_mark), timeout=60, what="W2's directory mark")
        run_cli("work", tree)  # W1: a whole walk while W2 is between its mark and its re-listing
        tracee = tracee_of(w2)
        w2.kill()  # kill strace only: W2 is detached and goes on at full speed
        w2.wait(30)
        wait_for(lambda: pid_gone(tracee), timeout=60, what="W2 to finish its walk")
    finally:
        if w2.poll() is None:
            w2.kill()
            w2.wait()
    # (W2's directory mark may stay: the requeue's live markers, made before its link, keep
    # every directory above the job looked at.)
    out = run_cli("work", tree)  # a fresh worker, nothing paused anywhere any more
    assert executions(log) == 2, (
        f"the ready job {job} was not run: {out.stderr.strip()!r}; "
        f"TREE/.final.g1 present: {os.path.exists(mark_path(tree / 'g1'))}")


def test_a_hint_through_a_symlink_in_the_tree_does_not_run_a_job_outside_it(tree, tmp_path):
    """A hint name is checked for '..' and absolute paths, but the hinted path is opened
    with O_NOFOLLOW on its last component only: `TREE/.dbdict/hints/5.0~ln%2F<rel>` with
    TREE/ln a symlink to another tree makes `dbdict work TREE` book and run a job that is
    not in TREE (the walk itself never follows a symlink)."""
    log = tmp_path / "log"
    other = tmp_path / "other"
    [outside] = create_jobs(str(other), [dict(i=9, log=str(log))], experiment("append_log")).created
    (tree / ".dbdict" / "hints").mkdir(parents=True)
    os.symlink(other, tree / "ln")
    rel = os.path.relpath(outside, other)
    (tree / ".dbdict" / "hints" / ("5.0~ln%2F" + rel.replace(os.sep, "%2F") + "~0")).touch()
    run_cli("work", tree)
    assert status(outside) == "ready" and executions(log) == 0, "a job outside the tree was run"


@needs_strace
def test_a_stale_hint_drop_does_not_remove_the_hint_of_the_next_requeue(tree, tmp_path):
    """Hints are one name per (priority, job), and a walker drops a hint it judged stale
    with a bare unlink of that name, long after its judgment:
    1. J is created at priority 2 (hint `2.0~J`); `dbdict run J` takes it (a one-shot run
       does not drop hints) and J is running;
    2. worker W2 lists the hints, reads J (running: not plain ready), and is held just
       before unlinking `2.0~J`;
    3. the run is stopped (SIGTERM): J is requeued ready at restart priority 2.0, and its
       writer hints again -- the same name `2.0~J`;
    4. W2's unlink lands: it removes the new hint. J is ready at priority 2 with no hint, so
       walks no longer try it first (the hint is lost, not stale)."""
    from dbdict_fs.procs import stat_fields as proc_stat_fields

    [job] = create_jobs(str(tree), [dict(sleep=120)], experiment("sleeper"), priority=2.0).created
    hints = tree / ".dbdict" / "hints"
    [hint_name] = os.listdir(hints)
    hint = hints / hint_name
    code = "import sys; from dbdict_fs.cli import main; sys.exit(main())"
    run = subprocess.Popen([sys.executable, "-c", code, "run", job], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    trace_out = tmp_path / "w2.strace"
    w2 = tracee = None
    try:
        wait_for(lambda: status(job) == "running", timeout=60, what="the run to start")
        w2 = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", str(trace_out), "-P", str(hint), "-e", "trace=unlink,unlinkat",
             "-e", f"inject=unlink,unlinkat:delay_enter={HOLD}", sys.executable, "-c", code, "work", str(tree)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: held_at(trace_out, hint), timeout=60, what="W2 at the unlink of the hint")
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 3  # requeued (INCOMPLETE after 'stop')
        state = jd.read_latest_state(str(job))[1]["dbdict"]
        assert state["status"] == "ready" and state["priority"] == 2.0
        assert len(os.listdir(hints)) == 2  # the new hint has a name of its own (its epoch)
        tracee = tracee_of(w2)
        os.kill(tracee, signal.SIGSTOP)  # W2 stops right after its held unlink returns
        w2.kill()
        w2.wait(30)
        wait_for(lambda: proc_stat_fields(tracee)[0] == b"T", timeout=30, what="W2 stopped after its unlink")
        assert status(job) == "ready"
        assert os.listdir(hints), f"{job} is ready at priority 2.0, but its hint was removed"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if w2 is not None and w2.poll() is None:
            tracee = tracee or tracee_of(w2)
            w2.kill()
            w2.wait()
        if tracee is not None and not pid_gone(tracee):
            os.kill(tracee, signal.SIGKILL)

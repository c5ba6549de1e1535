"""Issue 9, full disks: state writes fail cleanly and create never leaves a half job.

Each test mounts a small tmpfs (CI runs as root), puts a tree on it and fills the disk
with a filler file. Skipped, with the reason shown, where mounting is not permitted.
"""

import errno
import json
import os
import subprocess
import sys

import pytest

from dbdict_fs import create_jobs
from dbdict_fs import jobdir as jd
from dbdict_fs.errors import DbdictError

from conftest import read_state, run_cli

CLI = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]

DISK_KB = 1024


def _mount(path, options):
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}): "
                    f"full-disk behaviour not tested")


@pytest.fixture
def disk(tmp_path, monkeypatch):
    """A 1 MiB tmpfs at tmp_path/disk, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("not root: cannot mount a tmpfs, full-disk behaviour not tested")
    path = tmp_path / "disk"
    _mount(path, f"size={DISK_KB}k,mode=0755")
    monkeypatch.setenv("DBDICT_CACHE_DIR", str(tmp_path / "index-cache"))
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def _fill_fd(fd):
    """Write zeros until ENOSPC, in ever smaller blocks, so the disk ends up completely full."""
    for size in (65536, 4096, 512, 1):
        block = b"\0" * size
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break


def fill(disk, leave=0):
    """Fill the disk with disk/filler; then give back `leave` bytes (a page is 4096)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        _fill_fd(fd)
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, os.path.getsize(filler) - leave))
    return filler


def free(filler):
    os.unlink(filler)


def dot_entries(top):
    """Dot files and directories left anywhere under `top` (temporary builds, tokens), but
    not the tree's own .dbdict/ marker (create makes it first) nor discovery's final and live
    markers (empty files that are part of the tree, dbdict_fs/discovery.py)."""
    found = []
    for root, dirs, files in os.walk(top):
        if os.path.samefile(root, top) and ".dbdict" in dirs:
            dirs.remove(".dbdict")
        found += [os.path.join(root, n) for n in dirs + files
                  if n.startswith(".") and not n.startswith((".live.", ".final."))]
    return found


def complete(job):
    names = set(os.listdir(job))
    return {"config.yaml", "stdout", "stderr", "workdir"} <= names and jd.list_job(job).state_epoch is not None


def write_experiments(where):
    """Experiments that fill the disk they run on (cwd = the job's workdir, on the tmpfs)."""
    path = where / "disk_exps.py"
    path.write_text('''
import errno, os
from dbdict_fs import COMPLETE

def complete(state, channel):
    state.result = "finished"
    return COMPLETE

def _fill():
    if os.path.exists("filled-once"):
        return  # a later attempt, after the test freed the space
    open("filled-once", "w").close()
    fd = os.open("filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)

def fill_then_complete(state, channel):
    state.result = "finished"
    _fill()
    return COMPLETE

def fill_then_save(state, channel):
    _fill()
    state.progress = 1
    state.saved = channel.save()
    os.unlink("filler")
    state.result = "finished"
    return COMPLETE

def fill_then_raise(state, channel):
    _fill()
    raise ValueError("after filling the disk")

def _wait_for_file(path):
    import time
    while not os.path.exists(path):
        time.sleep(0.02)

def log_through_a_full_disk(state, channel):
    """Logs steps 1-10 and saves; once the test has filled the disk, logs 11-410 (a short
    write, then ENOSPC) and saves (refused: the worker handled those points first); once
    the test has freed it, logs 411-420 and returns."""
    for step in range(1, 11):
        channel.log(step, loss=float(step))
    state.saved = [channel.save()]
    open(os.path.join(state.ctl, "logged-1"), "w").close()
    _wait_for_file(os.path.join(state.ctl, "full"))
    for step in range(11, 411):
        channel.log(step, loss=float(step))
    state.saved.append(channel.save())
    open(os.path.join(state.ctl, "logged-2"), "w").close()
    _wait_for_file(os.path.join(state.ctl, "freed"))
    for step in range(411, 421):
        channel.log(step, loss=float(step))
    return COMPLETE
''')
    return str(path)


def assert_one_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc.stderr
    assert len(lines) >= 1 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    return lines


# ---------------------------------------------------------------- create

def test_create_on_a_full_disk_leaves_nothing(disk, tmp_path):
    exps = write_experiments(tmp_path)
    filler = fill(disk)
    proc = run_cli("create", disk / "tree", "-e", f"{exps}:fill_then_complete", "x={1,2,3}")
    lines = assert_one_line(proc)
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert "space" in lines[0].lower(), lines[0]
    tree = disk / "tree"
    # at most an empty tree is left: its .dbdict/ marker, no temporary build, no job
    assert not tree.exists() or (dot_entries(tree) == [] and list(jd.iter_jobdirs(str(tree))) == [])
    free(filler)


@pytest.mark.parametrize("leave_kb", [8, 24, 40, 80])
def test_create_running_out_of_space_half_way(disk, tmp_path, leave_kb):
    """The disk fills during a sweep: only complete job dirs, no dot temp dirs, one line."""
    exps = write_experiments(tmp_path)
    tree = disk / "tree"
    tree.mkdir()
    filler = fill(disk, leave=leave_kb * 1024)
    with pytest.raises(DbdictError) as info:
        create_jobs(tree, [{"x": i, "pad": "p" * 3000} for i in range(40)], f"{exps}:fill_then_complete")
    assert "space" in str(info.value).lower() and "\n" not in str(info.value)
    assert dot_entries(tree) == [], "a temporary job build was left behind"
    jobs = list(jd.iter_jobdirs(str(tree)))
    assert len(jobs) < 40
    for job in jobs:
        assert complete(job), f"half-written job {job}: {os.listdir(job)}"
        assert jd.read_latest_state(job)[1]["dbdict"]["status"] == "ready"
        jd.read_config(job)
    # directories made for the layout but never filled are not jobs either
    for root, dirs, files in os.walk(tree):
        assert not any(n.startswith(".") and not (root == str(tree) and n == ".dbdict")
                       and not n.startswith((".live.", ".final.")) for n in dirs + files)
    free(filler)
    again = create_jobs(tree, [{"x": i, "pad": "p" * 3000} for i in range(40)], f"{exps}:fill_then_complete")
    assert len(again.created) == 40 - len(jobs) and len(again.skipped) == len(jobs)


def test_create_out_of_inodes(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("not root: cannot mount a tmpfs")
    disk = tmp_path / "inodes"
    _mount(disk, "size=4m,nr_inodes=40")
    try:
        tree = disk / "tree"
        with pytest.raises(DbdictError):
            create_jobs(tree, [{"x": i} for i in range(20)], write_experiments(tmp_path) + ":fill_then_complete")
        assert dot_entries(tree) == []
        for job in jd.iter_jobdirs(str(tree)):
            assert complete(job)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# ---------------------------------------------------------------- run and work

@pytest.fixture
def full_job(disk, tmp_path):
    exps = write_experiments(tmp_path)
    return lambda name: create_jobs(disk / "tree", [{"x": 1}], f"{exps}:{name}").created[0]


def test_run_on_a_full_disk_writes_nothing(disk, full_job):
    job = full_job("complete")
    before = sorted(os.listdir(job)), open(os.path.join(job, "state.0.yaml"), "rb").read()
    filler = fill(disk)
    proc = run_cli("run", job, timeout=60)
    lines = assert_one_line(proc)
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert (sorted(os.listdir(job)), open(os.path.join(job, "state.0.yaml"), "rb").read()) == before, \
        "a run on a full disk left a claim or a temporary file"
    free(filler)
    proc = run_cli("run", job, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_final_state_write_fails_cleanly(disk, full_job):
    """The experiment fills the disk, then returns: the final commit fails. The run says so
    in one line with a non-zero exit, the running state stays intact and parseable, the job
    is not marked done, and a later run (space freed) finishes it."""
    job = full_job("fill_then_complete")
    proc = run_cli("run", job, timeout=60)
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if "space" in l.lower()]
    assert len(errors) == 1, proc.stderr
    assert "not marked done" in errors[0], errors[0]
    listing, state = jd.read_latest_state(job)  # parses: the previous state file is whole
    assert state["dbdict"]["status"] == "running" and state["dbdict"]["epoch"] == 1
    for name in os.listdir(job):
        if name.startswith("state.") and name != "state.yaml":
            with open(os.path.join(job, name)) as f:
                json.load(f)
    assert [n for n in os.listdir(job) if n.startswith(".tmp")] == []
    # the workdir's filler is the experiment's; remove it and run again: the dead holder's
    # claim is taken over at once on this host (same-host fast path) and the job finishes.
    os.unlink(os.path.join(job, "workdir", "filler"))
    proc = run_cli("run", job, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert read_state(job)["dbdict"]["status"] == "done"


def test_work_reports_a_failed_write_and_goes_on(disk, full_job):
    job = full_job("fill_then_raise")
    proc = run_cli("work", disk / "tree", timeout=60)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert "space" in proc.stderr.lower(), proc.stderr
    assert job in proc.stderr
    state = read_state(job)
    assert state["dbdict"]["status"] == "running", "the failure could not be recorded, so it must not be"


def test_save_on_a_full_disk_is_refused_not_fatal(disk, full_job):
    """channel.save() while the disk is full answers False; the experiment goes on and the
    final commit, after it freed the space, succeeds."""
    job = full_job("fill_then_save")
    proc = run_cli("run", job, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    state = read_state(job)
    assert state["dbdict"]["status"] == "done" and state["saved"] is False and state["result"] == "finished"


def test_requeue_and_cancel_on_a_full_disk(disk, full_job):
    pytest.importorskip("dbdict_fs.query", reason="dbdict_fs.query not written yet")
    job = full_job("fill_then_complete")
    tree = disk / "tree"
    filler = fill(disk)
    before = sorted(os.listdir(job))
    proc = run_cli("cancel", tree, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "space" in proc.stderr.lower(), proc.stderr
    assert sorted(os.listdir(job)) == before
    assert read_state(job)["dbdict"]["status"] == "ready"
    free(filler)
    proc = run_cli("cancel", tree, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert read_state(job)["dbdict"]["status"] == "canceled"
    filler = fill(disk)
    proc = run_cli("requeue", tree, "--status", "canceled", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert read_state(job)["dbdict"]["status"] == "canceled"
    free(filler)


def test_disk_fills_between_the_claim_and_the_first_write(disk, full_job):
    job = full_job("complete")
    filler = fill(disk, leave=4096)  # room for the claim token, not for the attempt header
    proc = run_cli("work", disk / "tree", timeout=60)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert "space" in proc.stderr.lower(), proc.stderr
    assert job in proc.stderr, f"the worker's error does not name the job: {proc.stderr}"
    free(filler)


def test_a_history_append_cut_short_by_a_full_disk_leaves_no_torn_line(disk, tmp_path):
    """Issue 23, item 9: the disk fills while the worker appends a batch of points: the
    write is cut short (part of a line lands), then ENOSPC. The batch is lost, but nothing
    of it stays: the points logged once space is back are all committed, whole."""
    from conftest import wait_for
    from dbdict_fs import history

    ctl = tmp_path / "ctl"
    ctl.mkdir()
    exps = write_experiments(tmp_path)
    job = create_jobs(disk / "tree", [{"ctl": str(ctl)}], f"{exps}:log_through_a_full_disk").created[0]
    worker = subprocess.Popen(CLI + ["run", job], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (ctl / "logged-1").exists(), timeout=60, what="the first batch",
                 detail=lambda: f"exit {worker.poll()}")
        filler = fill(disk)
        (ctl / "full").touch()
        wait_for(lambda: (ctl / "logged-2").exists(), timeout=60, what="the batch on a full disk")
        free(filler)
        (ctl / "freed").touch()
        out, err = worker.communicate(timeout=60)
    finally:
        worker.kill()
        worker.wait()
    assert worker.returncode == 0, err
    state = read_state(job)
    assert state["saved"] == [True, False] and state["dbdict"]["status"] == "done"
    steps = [row[1] for row in history(job)]
    assert steps[:10] == list(range(1, 11)) and steps[-10:] == list(range(411, 421)), steps
    with open(os.path.join(job, "history.1.jsonl"), "rb") as f:
        data = f.read(state["dbdict"]["history"]["bytes"])
    assert data.endswith(b"\n") and all(json.loads(line)["loss"] for line in data.splitlines())

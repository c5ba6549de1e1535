"""Issue 9, corrupt trees and hostile values: every command reports a bad job and goes on.

Each scenario damages one job of a small tree (its state, its config, a stray file, a
symlink) and checks the three things the contract promises (DESIGN.md 3, 6, 7):

* the readers (jobdir.read_latest_state / read_config) raise a DbdictError, nothing else;
* build_index marks exactly that job `corrupt`, with a reason, and indexes the others;
* `dbdict run JOB` refuses it: exit 2, one line on stderr, and the job directory is left
  byte for byte as it was (not even a claim).

Scenarios that expose a bug are kept and marked xfail(strict=True), so they flip when the
bug is fixed; the reason names the bug.
"""

import json
import os
import stat
import subprocess

import pytest

from dbdict_fs import create_jobs
from dbdict_fs import jobdir as jd
from dbdict_fs.errors import DbdictError

from conftest import experiment, read_state, run_cli

RUN_TIMEOUT = 20  # a command that hangs on a hostile file fails the test instead of CI


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """The index cache of commands run here goes to a throwaway directory."""
    monkeypatch.setenv("DBDICT_CACHE_DIR", str(tmp_path / "index-cache"))


def have_index():
    try:
        import dbdict_fs.index  # noqa: F401
        import dbdict_fs.query  # noqa: F401
    except ImportError:
        return False
    return True


needs_index = pytest.mark.skipif(not have_index(), reason="dbdict_fs.index/query not written yet")


# ---------------------------------------------------------------- helpers

def snapshot(top):
    """Everything below `top` (not following symlinks): kind, bytes or link target, mode."""
    out = {}
    for root, dirs, files in os.walk(top, followlinks=False):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, top)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                if st.st_size > 1 << 20:
                    out[rel] = ("big", st.st_size, st.st_mtime_ns)
                else:
                    with open(path, "rb") as f:
                        out[rel] = ("file", f.read())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


def assert_one_line_error(proc, code=2):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr


def write(path, data):
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def state_path(job):
    return os.path.join(job, jd.state_name(jd.list_job(job).state_epoch))


def edit_state(job, change):
    path = state_path(job)
    with open(path) as f:
        state = json.load(f)
    change(state)
    write(path, json.dumps(state, indent=2))


def set_book(**items):
    return lambda job: edit_state(job, lambda s: s["dbdict"].update(items))


def replace_state(data):
    return lambda job: write(state_path(job), data(job) if callable(data) else data)


def replace_config(data):
    return lambda job: write(os.path.join(job, jd.CONFIG), data)


def _state_yaml_with_tag(job):
    marker = os.path.join(job, "PWNED")
    return ("dbdict: {status: ready, priority: 1.0, epoch: 0, requeue_epoch: 0, attempts: 0,\n"
            "         experiment: 'x:y', hash: abc}\n"
            f"x: !!python/object/apply:os.system ['touch {marker}']\n")


def _config_with_tag(job):
    marker = os.path.join(job, "PWNED")
    write(os.path.join(job, jd.CONFIG),
          "dbdict:\n  experiment: x:y\n"
          f"x: !!python/object/apply:os.system ['touch {marker}']\n")


def _truncate_state(job):
    path = state_path(job)
    with open(path, "rb") as f:
        data = f.read()
    write(path, data[: len(data) // 2])


def _huge_state(job):
    """Valid JSON at the start, then a sparse hole past the size cap (fast on any disk)."""
    path = state_path(job)
    with open(path, "ab") as f:
        f.truncate(jd.MAX_FILE_BYTES + 4096)


def _state_is_a_directory(job):
    path = state_path(job)
    os.unlink(path)
    os.mkdir(path)


def _state_symlink_loop(job):
    path = state_path(job)
    os.unlink(path)
    os.symlink(os.path.basename(path), path)


def _state_symlink_to_dev_zero(job):
    path = state_path(job)
    os.unlink(path)
    os.symlink("/dev/zero", path)


def _state_fifo(job):
    path = state_path(job)
    os.unlink(path)
    os.mkfifo(path)


def _config_fifo(job):
    path = os.path.join(job, jd.CONFIG)
    os.unlink(path)
    os.mkfifo(path)


def _no_state(job):
    for name in os.listdir(job):
        if name.startswith("state."):
            os.unlink(os.path.join(job, name))


def _config_is_a_directory(job):
    path = os.path.join(job, jd.CONFIG)
    os.unlink(path)
    os.mkdir(path)


def _state_names_other_experiment(job):
    """A hand-edited state whose experiment differs from config.yaml's: other code would run."""
    other = experiment("fails")
    edit_state(job, lambda s: s["dbdict"].update(experiment=other))


ALIAS_BOMB = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
       f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]" for i in range(8)]
    + ["dbdict: {status: ready, priority: 1.0, epoch: 0, requeue_epoch: 0, attempts: 0, experiment: 'x:y', hash: h}"]
) + "\n"


def _xfail(reason):
    return pytest.mark.xfail(strict=True, reason=f"bug: {reason}")


_UNOPENABLE = ("jobdir.read_state_file lets OSError other than ENOENT (EISDIR, ELOOP, EACCES) "
               "escape instead of raising CorruptJob")
_FIFO = ("jobdir.read_file/index.read_job open() a FIFO without O_NONBLOCK and block forever "
         "(SIGTERM does not end `dbdict run`); a non-regular file must be corrupt")
_DISAGREES = ("by design: one file's reader cannot see it, and the index reads one file per job "
              "(DESIGN.md 6); run and work check the state against config.yaml before claiming")

# (what is damaged, mutation, id, {test: bug} for the tests a known bug makes fail)
_S = [
    ("state", _truncate_state, "state-truncated"),
    ("state", replace_state(""), "state-empty"),
    ("state", replace_state(b"\xff\xfe\x00\x81binary\x00\xc3("), "state-binary"),
    ("state", replace_state("\x00\x00\x00\x00"), "state-nul-bytes"),
    ("state", _huge_state, "state-over-size-cap"),
    ("state", replace_state("[" * 200_000 + "]" * 200_000), "state-deep-json"),
    ("state", replace_state("{a: " * 300 + "1" + "}" * 300), "state-deep-yaml"),
    ("state", replace_state("- " * 5000 + "x\n"), "state-deep-yaml-block"),
    ("state", replace_state(ALIAS_BOMB), "state-alias-bomb"),
    ("state", replace_state("[1, 2, 3]"), "state-a-list"),
    ("state", replace_state('"just a string"'), "state-a-string"),
    ("state", replace_state("null"), "state-null"),
    ("state", replace_state('{"x": 1}'), "state-no-dbdict-block"),
    ("state", replace_state('{"dbdict": [1]}'), "state-dbdict-a-list"),
    ("state", set_book(status=5), "state-status-int"),
    ("state", set_book(status="exploded"), "state-status-unknown"),
    ("state", set_book(status="corrupt"), "state-status-derived"),
    ("state", set_book(epoch="0"), "state-epoch-str"),
    ("state", set_book(epoch=7), "state-epoch-disagrees-with-name"),
    ("state", set_book(priority="high"), "state-priority-str"),
    ("state", set_book(attempts=True), "state-attempts-bool"),
    ("state", set_book(requeue_epoch=None), "state-requeue-epoch-null"),
    ("state", set_book(experiment=3), "state-experiment-int"),
    ("state", set_book(hash=["a"]), "state-hash-list"),
    ("state", lambda job: edit_state(job, lambda s: s["dbdict"].pop("status")), "state-status-missing"),
    ("state", replace_state(_state_yaml_with_tag), "state-python-object-tag"),
    ("state", replace_state("dbdict: {status: ready\n  bad: [\n"), "state-bad-yaml"),
    ("state", _no_state, "state-missing"),
    ("state", _state_symlink_to_dev_zero, "state-symlink-dev-zero"),
    ("state", _state_is_a_directory, "state-is-a-directory"),
    ("state", _state_symlink_loop, "state-symlink-loop"),
    ("state", _state_names_other_experiment, "state-experiment-disagrees-with-config",
     {"read": _DISAGREES, "index": _DISAGREES}),
    ("state", set_book(hash="000000000000"), "state-hash-disagrees-with-config",
     {"read": _DISAGREES, "index": _DISAGREES}),
    ("state", set_book(runs="abc"), "state-runs-not-a-number"),
    ("config", replace_config(""), "config-empty"),
    ("config", replace_config(b"\xff\xfe\x00binary"), "config-binary"),
    ("config", replace_config("x: 1\n"), "config-no-dbdict-block"),
    ("config", replace_config("dbdict: {hash: abc}\n"), "config-no-experiment"),
    ("config", replace_config("dbdict: {experiment: 5}\n"), "config-experiment-int"),
    ("config", replace_config("- a\n- b\n"), "config-a-list"),
    ("config", replace_config("dbdict: {experiment: 'a:b'\n"), "config-truncated"),
    ("config", replace_config(ALIAS_BOMB.replace("status", "experiment: 'x:y', status")), "config-alias-bomb"),
    ("config", _config_with_tag, "config-python-object-tag"),
    ("config", _config_is_a_directory, "config-is-a-directory"),
]


def scenarios(test, target=None):
    """pytest params (target, mutate) for one test, xfail where a known bug makes it fail."""
    out = []
    for target_, mutate, name, *bugs in _S:
        if target is not None and target_ != target:
            continue
        bug = (bugs[0] if bugs else {}).get(test)
        marks = [] if not bug else [pytest.mark.skip(reason=bug)] if bug.startswith("by design") else [_xfail(bug)]
        out.append(pytest.param(target_, mutate, id=name, marks=marks))
    return out


SCENARIOS = scenarios("read")


# The FIFO scenarios hang the reading process: they run only in subprocesses with a timeout.
HANGING = [
    pytest.param(_state_fifo, id="state-fifo"),
    pytest.param(_config_fifo, id="config-fifo"),
]


@pytest.fixture
def two_jobs(tree):
    result = create_jobs(tree, [{"x": 1}, {"x": 2}], experiment("double"))
    bad, good = result.created  # x=1, x=2
    return str(tree), bad, good


# ---------------------------------------------------------------- one damaged job

@pytest.mark.parametrize("target, mutate", SCENARIOS)
def test_readers_raise_only_dbdict_errors(two_jobs, target, mutate):
    tree, bad, good = two_jobs
    mutate(bad)
    with pytest.raises(DbdictError) as info:
        if target == "state":
            jd.read_latest_state(bad)
        else:
            jd.read_config(bad)
    assert bad in str(info.value)  # the message names the job (or its file)
    assert not os.path.exists(os.path.join(bad, "PWNED")), "a YAML tag ran code"
    assert read_state(good)["dbdict"]["status"] == "ready"


@needs_index
@pytest.mark.parametrize("target, mutate", scenarios("index", "state"))
def test_index_marks_exactly_that_job_corrupt(two_jobs, target, mutate):
    from dbdict_fs import build_index

    tree, bad, good = two_jobs
    mutate(bad)
    rows = {r["dbdict.path"]: r for r in build_index(tree, cache=False).select()}
    assert set(rows) == {bad, good}
    assert rows[bad]["dbdict.status"] == "corrupt"
    assert rows[bad].get("dbdict.error"), "a corrupt row says why"
    assert rows[good]["dbdict.status"] == "ready" and rows[good]["x"] == 2
    assert not os.path.exists(os.path.join(bad, "PWNED")), "a YAML tag ran code"


@pytest.mark.parametrize("target, mutate", scenarios("run"))
def test_run_refuses_and_writes_nothing(two_jobs, target, mutate):
    tree, bad, good = two_jobs
    mutate(bad)
    before = snapshot(bad)
    proc = run_cli("run", bad, timeout=RUN_TIMEOUT)
    assert_one_line_error(proc, 2)
    assert snapshot(bad) == before, "dbdict run wrote into a corrupt job"
    assert not os.path.exists(os.path.join(bad, "PWNED"))


@pytest.mark.parametrize("mutate", HANGING)
def test_non_regular_files_do_not_hang(two_jobs, mutate):
    tree, bad, good = two_jobs
    mutate(bad)
    before = snapshot(bad)
    try:
        proc = run_cli("run", bad, timeout=4)
    except subprocess.TimeoutExpired:
        pytest.fail("dbdict run hung on a FIFO in the job directory")
    assert_one_line_error(proc, 2)
    assert snapshot(bad) == before
    if have_index():
        try:
            proc = run_cli("status", tree, "--format", "json", timeout=4)
        except subprocess.TimeoutExpired:
            pytest.fail("dbdict status hung on a FIFO in the job directory")
        assert proc.returncode == 0, proc.stderr
        if mutate is _state_fifo:  # the index reads one file per job: config damage shows at run
            assert json.loads(proc.stdout)["counts"].get("corrupt") == 1


# ---------------------------------------------------------------- a tree of damaged jobs

def _scenarios(target):
    """Scenarios of one target that the whole tree can hold at once (buggy ones left out)."""
    return [(s[1], s[2]) for s in _S if s[0] == target and len(s) == 3]


@pytest.fixture
def damaged_tree(tree):
    scenarios = _scenarios("state")
    configs = [{"x": i} for i in range(len(scenarios))] + [{"x": 100}, {"x": 101}]
    result = create_jobs(tree, configs, experiment("double"))
    damaged = sorted(result.created[: len(scenarios)])
    good = sorted(result.created[len(scenarios):])
    for path, (mutate, _) in zip(result.created, scenarios):
        mutate(path)
    return str(tree), damaged, good


@needs_index
def test_status_and_query_report_every_corrupt_job_and_go_on(damaged_tree):
    tree, damaged, good = damaged_tree
    proc = run_cli("status", tree, "--format", "json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["counts"] == {"corrupt": len(damaged), "ready": len(good)}
    proc = run_cli(tree, "status=corrupt", "--format", "json", "--columns", "path,error",
                   prog="dbdict-query", timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert sorted(r["dbdict.path"] for r in rows) == damaged
    assert all(r.get("dbdict.error") for r in rows)
    # a table for people ends with a warning naming how many are corrupt
    proc = run_cli(tree, prog="dbdict-query", timeout=60)
    assert proc.returncode == 0 and f"{len(damaged)} corrupt jobs" in proc.stderr, proc.stderr


def test_work_runs_the_good_jobs_and_leaves_corrupt_ones_alone(damaged_tree):
    tree, damaged, good = damaged_tree
    before = {p: snapshot(p) for p in damaged}
    proc = run_cli("work", tree, "--lease", "30", "--heartbeat", "1", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for path in good:
        assert read_state(path)["dbdict"]["status"] == "done"
    for path in damaged:
        assert snapshot(path) == before[path], f"work wrote into the corrupt job {path}"


@pytest.mark.parametrize("mutate", [pytest.param(_state_is_a_directory, id="state-is-a-directory"),
                                    pytest.param(_state_symlink_loop, id="state-symlink-loop")])
def test_work_goes_on_past_a_state_it_cannot_open(two_jobs, mutate):
    tree, bad, good = two_jobs
    mutate(bad)
    proc = run_cli("work", tree, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert read_state(good)["dbdict"]["status"] == "done"


def test_work_leaves_a_job_with_a_corrupt_config_alone(tree):
    scenarios = _scenarios("config")
    result = create_jobs(tree, [{"x": i} for i in range(len(scenarios))], experiment("double"))
    for path, (mutate, _) in zip(result.created, scenarios):
        mutate(path)
    before = {p: snapshot(p) for p in result.created}
    proc = run_cli("work", tree, timeout=120)
    assert proc.returncode == 0, proc.stderr
    changed = [p for p in result.created if snapshot(p) != before[p]]
    assert changed == [], f"work ran {len(changed)} jobs whose config.yaml is corrupt"


# ---------------------------------------------------------------- stray files

def _stray_transients(job):
    for name in (".tmp.state.1.yaml.123.abcd", ".tok.host.1.beef", "state.9.yaml.tmp", "claim.x",
                 "state.yaml~", ".nfs000001"):
        write(os.path.join(job, name), "garbage {[")


def test_stray_transient_files_are_ignored(two_jobs):
    """Dot files, editor backups and names that are not state.<E>.yaml/claim.<E> never count."""
    tree, bad, good = two_jobs
    _stray_transients(bad)
    assert jd.read_latest_state(bad)[1]["dbdict"]["epoch"] == 0
    proc = run_cli("run", bad, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert read_state(bad)["dbdict"]["status"] == "done"


@pytest.mark.parametrize("content", ["", "not json {", '{"host": 5, "pid": "x", "lease": "soon"}', "[]"])
def test_a_stray_claim_with_garbage_is_never_a_crash(two_jobs, content):
    """A claim newer than the state holds the job (DESIGN.md 3: booked); whatever it
    contains, run refuses with one line and writes nothing, and status reports the job."""
    tree, bad, good = two_jobs
    write(os.path.join(bad, "claim.7"), content)
    before = snapshot(bad)
    proc = run_cli("run", bad, timeout=RUN_TIMEOUT)
    assert proc.returncode in (2, 4), proc.stderr
    assert_one_line_error(proc, proc.returncode)
    assert snapshot(bad) == before
    if have_index():
        proc = run_cli("status", tree, "--format", "json", timeout=60)
        assert proc.returncode == 0, proc.stderr
        counts = json.loads(proc.stdout)["counts"]
        assert sum(counts.values()) == 2 and counts.get("ready") == 1


def test_a_claim_that_is_a_directory(two_jobs):
    tree, bad, good = two_jobs
    os.mkdir(os.path.join(bad, "claim.1"))
    before = snapshot(bad)
    proc = run_cli("run", bad, timeout=RUN_TIMEOUT)
    assert proc.returncode in (2, 4)
    assert_one_line_error(proc, proc.returncode)
    assert snapshot(bad) == before


# ---------------------------------------------------------------- symlinks

def test_symlinked_job_dirs_and_loops_are_not_followed(tmp_path):
    """A symlink to a job outside the tree, a loop and a link to / : the walk ends, and
    nothing outside the tree is listed, run or written."""
    tree = tmp_path / "tree"
    outside = tmp_path / "outside"
    create_jobs(outside, [{"x": 99}], experiment("double"))
    create_jobs(tree, [{"x": 1}], experiment("double"))
    (tree / "linked-job").symlink_to(jd.iter_jobdirs(str(outside)).__next__())
    (tree / "loop").symlink_to(tree)
    (tree / "up").symlink_to("..")
    (tree / "root").symlink_to("/")
    (tree / "sub").mkdir()
    (tree / "sub" / "loop").symlink_to(tree / "sub")
    assert len(list(jd.iter_jobdirs(str(tree)))) == 1
    before = snapshot(str(outside))
    proc = run_cli("work", tree, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(str(outside)) == before, "work ran a job outside the tree"
    if have_index():
        from dbdict_fs import build_index

        rows = build_index(str(tree), cache=False).select()
        assert [r["x"] for r in rows] == [1]
        proc = run_cli("status", tree, "--format", "json", timeout=60)
        assert json.loads(proc.stdout)["counts"] == {"done": 1}


def test_name_template_cannot_escape_through_a_symlink_in_the_tree(tmp_path):
    tree = tmp_path / "tree"
    outside = tmp_path / "outside"
    outside.mkdir()
    tree.mkdir()
    (tree / "out").symlink_to(outside)
    try:
        create_jobs(tree, [{"x": 1}], experiment("double"), name="out/{x}")
    except DbdictError:
        pass
    assert os.listdir(outside) == [], "a job was written outside the tree"


def test_state_link_pointing_outside_is_not_used(two_jobs, tmp_path):
    """Tools never rely on state.yaml (DESIGN.md 1): a hostile link changes nothing."""
    tree, bad, good = two_jobs
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(json.dumps({"dbdict": {"status": "done"}}))
    os.unlink(os.path.join(bad, jd.STATE_LINK))
    os.symlink(str(elsewhere), os.path.join(bad, jd.STATE_LINK))
    assert jd.read_latest_state(bad)[1]["dbdict"]["status"] == "ready"
    proc = run_cli("run", bad, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(elsewhere.read_text()) == {"dbdict": {"status": "done"}}, "wrote through the link"
    assert os.readlink(os.path.join(bad, jd.STATE_LINK)).startswith("state.")


def test_log_symlinks_cannot_make_run_write_outside_the_tree(two_jobs, tmp_path):
    tree, bad, good = two_jobs
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name in (jd.STDOUT, jd.STDERR):
        os.unlink(os.path.join(bad, name))
        os.symlink(str(victim), os.path.join(bad, name))
    run_cli("run", bad, timeout=60)
    assert victim.read_text() == "precious\n", "run appended to a file outside the tree"


# ---------------------------------------------------------------- permissions

@pytest.mark.skipif(os.geteuid() == 0, reason="runs as root: chmod 000 does not stop root from reading "
                                              "(EACCES is covered by the EISDIR/ELOOP scenarios, same path)")
def test_unreadable_state_is_corrupt(two_jobs):
    tree, bad, good = two_jobs
    os.chmod(state_path(bad), 0)
    with pytest.raises(DbdictError):
        jd.read_latest_state(bad)
    proc = run_cli("run", bad, timeout=RUN_TIMEOUT)
    assert_one_line_error(proc, 2)


# ---------------------------------------------------------------- hostile specs

def test_a_source_spec_is_the_only_code_create_runs(tmp_path):
    """create never imports the experiment (it is read with ast), and YAML in job files is
    never executed: only the SOURCE generator the user named runs."""
    marker = tmp_path / "imported"
    exp = tmp_path / "exp_side_effect.py"
    exp.write_text(f"open({str(marker)!r}, 'w').close()\n\ndef main(state, channel):\n    pass\n")
    proc = run_cli("create", tmp_path / "tree", "-e", f"{exp}:main", "x=1")
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "create imported the experiment module"


def test_experiment_cannot_forge_bookkeeping(tree, tmp_path):
    """The worker owns the dbdict block: an experiment writing state.dbdict is ignored."""
    exp = tmp_path / "forge.py"
    exp.write_text("def main(state, channel):\n"
                   "    state['dbdict'] = {'status': 'failed', 'epoch': 99, 'priority': 'x'}\n"
                   "    state.result = 1\n")
    job = create_jobs(tree, [{"x": 1}], f"{exp}:main").created[0]
    proc = run_cli("run", job, timeout=60)
    assert proc.returncode == 0, proc.stderr
    state = read_state(job)
    assert state["dbdict"]["status"] == "done" and state["dbdict"]["epoch"] == 1
    assert state["result"] == 1


def test_work_wait_does_not_wait_for_a_job_it_refuses(two_jobs):
    """A job whose config.yaml is broken looks ready to the index (one file per job); a
    --wait worker must say so once and finish, not poll for it for ever."""
    tree, bad, good = two_jobs
    write(os.path.join(bad, jd.CONFIG), "- not\n- a mapping\n")
    proc = run_cli("work", tree, "--wait", "--lease", "5", "--heartbeat", "1", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("skipping a damaged job") == 1 and bad in proc.stderr
    assert read_state(good)["dbdict"]["status"] == "done"

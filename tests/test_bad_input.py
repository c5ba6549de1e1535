"""Issue 9, bad input: every CLI argument and every Python API argument is validated.

A bad argument gives one line on stderr that names the problem, exit 2, no traceback, and
writes nothing: the table below runs every command as a real process against a small tree
and compares the whole work area (tree, cwd, a spare dir) before and after.
"""

import importlib.util
import math
import os
import stat

import pytest

from dbdict_fs import create_jobs
from dbdict_fs import jobdir as jd
from dbdict_fs.errors import DbdictError

from conftest import experiment, run_cli

GENS = '''
def half():
    yield {"x": 10}
    yield {"x": 11}
    raise RuntimeError("boom half-way")

def not_dicts():
    yield {"x": 1}
    yield [1, 2]

def nan():
    yield {"x": 1}
    yield {"x": float("nan")}

def bad_key():
    yield {"x": 1}
    yield {"bad-key": 1}

def dotted_key():
    yield {"a.b": 1}

def date():
    import datetime
    yield {"x": datetime.date(2026, 1, 1)}

def raises_on_call():
    raise KeyError("no")

def returns_int():
    return 5

def datetime_deep():
    import datetime
    yield {"m": {"when": datetime.datetime(2026, 1, 1)}}

def clash():
    yield {"x": 1}
    yield {"x": 2}
'''


def have(module):
    return importlib.util.find_spec(f"dbdict_fs.{module}") is not None


def snapshot(top):
    out = {}
    for root, dirs, files in os.walk(top, followlinks=False):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    out[os.path.relpath(path, top)] = f.read()
            elif stat.S_ISLNK(st.st_mode):
                out[os.path.relpath(path, top)] = ("link", os.readlink(path))
            else:
                out[os.path.relpath(path, top)] = stat.S_IFMT(st.st_mode)
    return out


def make_area(work, cache):
    """work/: tree/ (two ready jobs), afile, gens.py, exp.py, and an empty dir; cwd = work/."""
    tree = work / "tree"
    jobs = create_jobs(tree, [{"x": 1}, {"x": 2}], experiment("double")).created
    (work / "afile").write_text("not a tree\n")
    (work / "gens.py").write_text(GENS)
    (work / "exp.py").write_text("def main(state, channel):\n    state.result = 1\n")
    (work / "empty").mkdir()
    return {"work": str(work), "tree": str(tree), "job": jobs[0], "cache": str(cache)}


@pytest.fixture(scope="module")
def shared_area(tmp_path_factory):
    return make_area(tmp_path_factory.mktemp("bad input é"), tmp_path_factory.mktemp("cache"))


@pytest.fixture
def area(request, shared_area, tmp_path):
    """The shared area, or a fresh one for a case expected to fail (it may write)."""
    if request.node.get_closest_marker("xfail"):
        (tmp_path / "w é").mkdir()
        return make_area(tmp_path / "w é", tmp_path / "cache")
    return shared_area


def _xfail(reason):
    return pytest.mark.xfail(strict=True, reason=f"bug: {reason}")


_LIST = ("x={1,2}",)
# (prog, args, a fragment the one-line error must contain); T = tree, J = a job,
# F = a plain file, E = an experiment spec, N = a path that does not exist.
CLI_CASES = [
    # dbdict itself
    ("dbdict", [], "required"),
    ("dbdict", ["bogus"], "invalid choice"),
    ("dbdict", ["--bogus"], "required"),
    ("dbdict", ["show", "J", "--bogus"], "--bogus"),
    ("dbdict", ["crate", "T"], "invalid choice"),
    # create
    ("dbdict", ["create"], "required"),
    ("dbdict", ["create", "T"], "--experiment"),
    ("dbdict", ["create", "T", "-e", "E", "1x=2"], "1x=2"),
    ("dbdict", ["create", "T", "-e", "E", "a..b=2"], "a..b=2"),
    ("dbdict", ["create", "T", "-e", "E", "=2"], "=2"),
    ("dbdict", ["create", "T", "-e", "E", "a-b=2"], "a-b=2"),
    ("dbdict", ["create", "T", "-e", "E", "dbdict=2"], "reserved"),
    ("dbdict", ["create", "T", "-e", "E", "x=.inf"], "infinity"),
    ("dbdict", ["create", "T", "-e", "E", "x=.nan"], "NaN"),
    ("dbdict", ["create", "T", "-e", "E", "x=-.inf"], "infinity"),
    ("dbdict", ["create", "T", "-e", "E", "x={}"], "empty"),
    ("dbdict", ["create", "T", "-e", "E", "lr={0.1,"], "lr={0.1,"),
    ("dbdict", ["create", "T", "-e", "E", "lr=[0.1"], "unclosed"),
    ("dbdict", ["create", "T", "-e", "E", "lr="], "no value"),
    ("dbdict", ["create", "T", "-e", "E"], "no keys"),
    ("dbdict", ["create", "T", "gens.py:returns_int", "-e", "E"], "not an iterable"),
    ("dbdict", ["create", "T", "gens.py:datetime_deep", "-e", "E", "y=1"], "m.when"),
    ("dbdict", ["create", "T", "-e", "E", "y=2", "y.z=1"], "y.z"),
    pytest.param("dbdict", ["create", "T", "-e", "E", "y.z=1", "y=2"], "y"),
    ("dbdict", ["create", "T", "-e", "E", "x=1", "--priority", "nan"], "--priority"),
    ("dbdict", ["create", "T", "-e", "E", "x=1", "--priority", "inf"], "--priority"),
    ("dbdict", ["create", "T", "-e", "E", "x=1", "--priority", "high"], "--priority"),
    ("dbdict", ["create", "F", "-e", "E", "x=1"], "not a directory"),
    ("dbdict", ["create", "J", "-e", "E", "x=1"], "job directory"),
    ("dbdict", ["create", "T", "-e", "nonexistent.py:main", "x=1"], "not found"),
    ("dbdict", ["create", "T", "-e", "exp.py:nope", "x=1"], "nope"),
    ("dbdict", ["create", "T", "-e", "exp.py", "x=1"], "module:attr"),
    ("dbdict", ["create", "T", "-e", "1bad.mod:main", "x=1"], "1bad.mod"),
    ("dbdict", ["create", "T", "-e", "no_such_module_xyz:main", "x=1"], "no_such_module_xyz"),
    ("dbdict", ["create", "T", "-e", "exp.py:a.b", "x=1"], "a.b"),
    ("dbdict", ["create", "T", "nonexistent.py:gen", "-e", "E"], "nonexistent.py"),
    ("dbdict", ["create", "T", "gens.py:half", "-e", "E"], "boom half-way"),
    ("dbdict", ["create", "T", "gens.py:not_dicts", "-e", "E"], "dict"),
    ("dbdict", ["create", "T", "gens.py:nan", "-e", "E"], "NaN"),
    ("dbdict", ["create", "T", "gens.py:bad_key", "-e", "E"], "bad-key"),
    ("dbdict", ["create", "T", "gens.py:dotted_key", "-e", "E"], "a.b"),
    ("dbdict", ["create", "T", "gens.py:date", "-e", "E"], "date"),
    ("dbdict", ["create", "T", "gens.py:raises_on_call", "-e", "E"], "KeyError"),
    ("dbdict", ["create", "T", "gens.py:half", "gens.py:nan", "-e", "E"], "second SOURCE"),
    ("dbdict", ["create", "T", "gens.py:clash", "-e", "E", "--name", "same"], "two different configs"),
    ("dbdict", ["create", "T", "-e", "E", "x=1", "--name", "../{x}"], "inside the tree"),
    ("dbdict", ["create", "T", "-e", "E", "x=1", "--name", "/abs/{x}"], "inside the tree"),
    ("dbdict", ["create", "T", "-e", "E", "x=..", "--name", "{x}"], "inside the tree"),
    ("dbdict", ["create", "T", "-e", "E", "x=a/../../b", "--name", "{x}"], "inside the tree"),
    ("dbdict", ["create", "T", "-e", "E", "x=.hidden", "--name", "{x}"], "inside the tree"),
    ("dbdict", ["create", "T", "-e", "E", "x=1", "--name", "a//{x}"], "inside the tree"),
    ("dbdict", ["create", "T", "-e", "E", "x=1", "--name", "{y}"], "'y'"),
    pytest.param("dbdict", ["create", "T", "-e", "E", "x=a", "x=" + "b" * 300, "--name", "{x}"], "long"),
    # run (and its seed name)
    ("dbdict", ["run"], "required"),
    ("dbdict", ["run", "N"], "no such"),
    ("dbdict", ["run", "F"], "F"),
    ("dbdict", ["run", "T"], "not a job directory"),
    ("dbdict", ["run", "J", "--lease", "-1"], "--lease"),
    ("dbdict", ["run", "J", "--lease", "0"], "--lease"),
    ("dbdict", ["run", "J", "--lease", "10", "--heartbeat", "5"], "fifth"),
    ("dbdict", ["run", "J", "--heartbeat", "abc"], "--heartbeat"),
    ("dbdict", ["run", "J", "--grace", "inf"], "--grace"),
    ("dbdict", ["run", "J", "--grace", "-1"], "--grace"),
    ("dbdict", ["run", "J", "--max-runtime", "nan"], "--max-runtime"),
    ("dbdict", ["run", "J", "--max-attempts", "0"], "--max-attempts"),
    ("dbdict", ["run", "J", "--max-attempts", "1.5"], "--max-attempts"),
    ("dbdict", ["run", "J", "--max-resumes", "-2"], "--max-resumes"),
    ("dbdict", ["run", "J", "--restart-priority", "nan"], "--restart-priority"),
    ("dbdict", ["run", "J", "--scratch", "N"], "--scratch"),
    ("dbdict", ["run", "J", "--scratch", "F"], "--scratch"),
    ("dbdict", ["run", "J", "--bogus"], "--bogus"),
    ("dbdict", ["run", "J", "extra"], "extra"),
    ("dbdict", ["run", "J", "--lease"], "--lease"),
    ("env:DBDICT_LEASE=abc", ["run", "J"], "DBDICT_LEASE"),
    ("env:DBDICT_LEASE=nan", ["run", "J"], "lease"),
    ("env:DBDICT_HEARTBEAT=-1", ["run", "J"], "heartbeat"),
    ("env:DBDICT_HEARTBEAT=500", ["run", "J"], "fifth"),
    ("env:DBDICT_EXPERIMENT_TEMPDIR=/no/such/dir", ["run", "J"], "scratch"),
    ("dbdict-run-job", ["run"], "required"),
    ("dbdict-run-job", ["run", "N"], "no such"),
    ("dbdict-run-job", ["create", "T"], "invalid choice"),
    ("dbdict-run-job", ["run", "J", "--lease", "-5"], "--lease"),
    # work
    ("dbdict", ["work", "N"], "no such"),
    ("dbdict", ["work", "F"], "F"),
    ("dbdict", ["work", "T", "--max-jobs", "0"], "--max-jobs"),
    ("dbdict", ["work", "T", "--lease", "nan"], "--lease"),
    ("dbdict", ["work", "T", "--lease", "60", "--heartbeat", "13"], "fifth"),
    ("dbdict", ["work", "T", "lr"], "lr"),
    ("dbdict-run-job", ["work", "N"], "no such"),
    # cmdline
    ("dbdict", ["cmdline"], "required"),
    ("dbdict", ["cmdline", "nonexistent.py:main", "x=1"], "not found"),
    ("dbdict", ["cmdline", "exp.py:main", *_LIST], "one experiment"),
    ("dbdict", ["cmdline", "exp.py:main", "bad key=1"], "bad key=1"),
    ("dbdict", ["cmdline", "exp.py:main", "x=.nan"], "NaN"),
    pytest.param("dbdict", ["cmdline", "exp.py:main", "x=1", "--lease", "5", "--heartbeat", "5"], "fifth"),
    ("dbdict", ["cmdline", "exp.py:main", "x=1", "--max-attempts", "0"], "--max-attempts"),
    ("dbdict", ["cmdline", "exp.py:main", "x=1", "--tree", "F"], "not a directory"),
    # show and logs
    ("dbdict", ["show", "N"], "no such"),
    ("dbdict", ["show", "F"], "F"),
    ("dbdict", ["show", "T"], "not a job directory"),
    ("dbdict", ["show", "J", "--format", "xml"], "--format"),
    ("dbdict", ["logs", "N"], "no such"),
    ("dbdict", ["logs", "T"], "not a job directory"),
    ("dbdict", ["logs", "J", "--attempt", "0"], "--attempt"),
    ("dbdict", ["logs", "J", "--attempt", "x"], "--attempt"),
    ("dbdict", ["logs", "J", "--attempt", "5"], "attempts"),
]

INDEX_CASES = [
    # status, requeue, cancel, query: they need the index
    ("dbdict", ["status", "N"], "no such"),
    ("dbdict", ["status", "F"], "F"),
    ("dbdict", ["status", "T", "--format", "xml"], "--format"),
    ("dbdict", ["status", "D"], "not a dbdict tree"),
    ("dbdict", ["work", "D"], "not a dbdict tree"),
    ("dbdict", ["cancel", "D"], "not a dbdict tree"),
    ("dbdict-query", ["D"], "not a dbdict tree"),
    ("dbdict", ["status", "T", "status=finished"], "no such status"),
    ("dbdict-query", ["T", "status=cancelled"], "did you mean canceled"),
    ("dbdict", ["work", "T", "status=redy"], "ready"),
    ("dbdict-query", ["T", "--columns", "epoch"], "dbdict.epoch"),
    ("dbdict", ["status", "T", "x"], "key=value"),
    ("dbdict", ["status", "T", "--where", "x >"], "--where"),
    ("dbdict", ["status", "T", "--where", "nosuchcolumn > 1"], "nosuchcolumn"),
    ("dbdict", ["requeue", "T", "--status", "bogus"], "bogus"),
    ("dbdict", ["requeue", "T", "--status", "done"], "--force"),
    ("dbdict", ["requeue", "T", "--priority", "nan"], "--priority"),
    ("dbdict", ["requeue", "N"], "no such"),
    ("dbdict", ["requeue", "T", "--where", "x = = 1"], "--where"),
    ("dbdict", ["cancel", "N"], "no such"),
    ("dbdict", ["cancel", "T", "--where", "(("], "--where"),
    ("dbdict", ["cancel", "T", "--where", "nosuchcolumn = 1"], "nosuchcolumn"),
    ("dbdict", ["work", "T", "--where", "x >"], "--where"),
    ("dbdict", ["work", "T", "--where", "nosuchcolumn = 1"], "nosuchcolumn"),
    ("dbdict-query", [], "TREE"),
    ("dbdict-query", ["N"], "no such"),
    ("dbdict-query", ["F"], "F"),
    ("dbdict-query", ["T", "--format", "xml"], "--format"),
    ("dbdict-query", ["T", "--columns", "nosuchcolumn"], "nosuchcolumn"),
    ("dbdict-query", ["T", "--sort", "nosuchcolumn"], "nosuchcolumn"),
    ("dbdict-query", ["T", "--sort", "-nosuchcolumn"], "nosuchcolumn"),
    ("dbdict-query", ["T", "--limit", "-1"], "--limit"),
    ("dbdict-query", ["T", "--limit", "x"], "--limit"),
    ("dbdict-query", ["T", "--where", "x >"], "--where"),
    ("dbdict-query", ["T", "--where", "x == 1; drop table jobs"], "--where"),
    ("dbdict-query", ["T", "--where", "__import__('os')"], "__import__"),
    ("dbdict-query", ["T", "x"], "key=value"),
    ("dbdict-query", ["T", "1x=1"], "1x=1"),
    ("dbdict-query", ["T", "--sql", "select 1", "x=1"], "--sql"),
    ("dbdict-query", ["T", "--sql", "select nosuch from jobs"], "nosuch"),
    ("dbdict-query", ["T", "--sql", "CREATE TABLE t(x)"], "--sql"),
    ("dbdict-query", ["T", "--sql", "INSERT INTO jobs DEFAULT VALUES"], "--sql"),
    ("dbdict-query", ["T", "--sql", "DELETE FROM jobs"], "--sql"),
    ("dbdict-query", ["T", "--sql", "UPDATE jobs SET x = 0"], "--sql"),
    ("dbdict-query", ["T", "--sql", "DROP TABLE jobs"], "--sql"),
    ("dbdict-query", ["T", "--sql", "ATTACH DATABASE 'W/attached.db' AS a"], "--sql"),
    ("dbdict-query", ["T", "--sql", "ATTACH DATABASE 'T/in-tree.db' AS a"], "--sql"),
    ("dbdict-query", ["T", "--sql", "VACUUM INTO 'W/vacuumed.db'"], "--sql"),
    ("dbdict-query", ["T", "--sql", "PRAGMA journal_mode=WAL"], "--sql"),
    ("dbdict-query", ["T", "--sql", "PRAGMA temp_store_directory='W'"], "--sql"),
    ("dbdict-query", ["T", "--sql", "PRAGMA writable_schema=ON"], "--sql"),
    ("dbdict-query", ["T", "--sql", "select load_extension('W/evil')"], "load_extension"),
    ("dbdict-query", ["T", "--sql", "select 1; ATTACH 'W/second.db' AS b"], "--sql"),
    ("dbdict-query", ["T", "--sql", "CREATE TEMP TRIGGER t AFTER INSERT ON jobs BEGIN SELECT 1; END"], "--sql"),
    ("dbdict", ["query", "T", "--format", "yaml"], "--format"),
    ("dbdict", ["query", "T", "--sql", "CREATE VIEW v AS SELECT 1"], "--sql"),
]


def _fill(args, area):
    work = area["work"]
    repl = {"T": area["tree"], "J": area["job"], "F": os.path.join(work, "afile"),
            "E": os.path.join(work, "exp.py") + ":main", "N": os.path.join(work, "no", "such"),
            "D": os.path.join(work, "empty")}
    out = []
    for a in args:
        a = repl.get(a, a)
        a = a.replace("'W/", f"'{work}/").replace("'T/", f"'{area['tree']}/")
        out.append(a)
    return out


def _check_case(area, prog, args, fragment):
    env = {"DBDICT_CACHE_DIR": area["cache"]}
    if prog.startswith("env:"):
        key, _, value = prog[4:].partition("=")
        env[key] = value
        prog = "dbdict"
    before = snapshot(area["work"])
    proc = run_cli(*_fill(args, area), prog=prog, cwd=area["work"], env=env, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert "internal error" not in lines[0], proc.stderr
    fragment = _fill([fragment], area)[0]
    assert fragment.lower() in lines[0].lower(), f"the error does not name {fragment!r}: {lines[0]}"
    assert snapshot(area["work"]) == before, "a rejected command wrote something"
    assert proc.stdout == "", proc.stdout


@pytest.mark.parametrize("prog, args, fragment", CLI_CASES)
def test_cli_bad_input(area, prog, args, fragment):
    _check_case(area, prog, args, fragment)


@pytest.mark.parametrize("prog, args, fragment", INDEX_CASES)
def test_cli_bad_input_index_commands(area, prog, args, fragment):
    if not (have("index") and have("query")):
        pytest.skip("dbdict_fs.index/query not written yet")
    _check_case(area, prog, args, fragment)


def test_the_table_is_big_enough():
    assert len(CLI_CASES) + len(INDEX_CASES) >= 50


# ---------------------------------------------------------------- the Python API

class _Text(str):
    """A str subclass, as numpy.str_ is (np.array(['resnet'])[0])."""


def _nest(depth, leaf=1):
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def _self_referencing():
    d = {"x": 1}
    d["me"] = d
    return d


def _half_way():
    yield {"x": 1}
    yield {"x": 2}
    raise OSError("the sweep file vanished")


E = experiment("double")
API_CASES = [
    # (callable, a fragment of the message); each must raise DbdictError and write nothing
    pytest.param(lambda t: create_jobs(t, [{"x": float("nan")}], E), "NaN", id="nan"),
    pytest.param(lambda t: create_jobs(t, [{"x": [1, {"y": float("-inf")}]}], E), "x[1].y", id="nested-inf"),
    pytest.param(lambda t: create_jobs(t, [{"x": 1}, {"bad key": 1}], E), "bad key", id="non-identifier-key"),
    pytest.param(lambda t: create_jobs(t, [{"x": {"1a": 1}}], E), "1a", id="nested-non-identifier"),
    pytest.param(lambda t: create_jobs(t, [{1: 1}], E), "1", id="int-key"),
    pytest.param(lambda t: create_jobs(t, [{"é": 1}], E), "é", id="non-ascii-key"),
    pytest.param(lambda t: create_jobs(t, [{"dbdict": 1}], E), "reserved", id="reserved-key"),
    pytest.param(lambda t: create_jobs(t, [{"x": b"raw"}], E), "bytes", id="bytes-value"),
    pytest.param(lambda t: create_jobs(t, [{"x": {1, 2}}], E), "set", id="set-value"),
    pytest.param(lambda t: create_jobs(t, [{"x": object()}], E), "object", id="object-value"),
    pytest.param(lambda t: create_jobs(t, [{"x": __import__("datetime").date(2026, 1, 1)}], E), "date",
                 id="date-value"),
    pytest.param(lambda t: create_jobs(t, _half_way(), E), "vanished", id="generator-raises-half-way"),
    pytest.param(lambda t: create_jobs(t, 5, E), "int", id="source-an-int"),
    pytest.param(lambda t: create_jobs(t, {"x": 1}, E), "one dict", id="source-one-dict"),
    pytest.param(lambda t: create_jobs(t, ["abc"], E), "dict", id="item-a-str"),
    pytest.param(lambda t: create_jobs(t, [None], E), "dict", id="item-none"),
    pytest.param(lambda t: create_jobs(t, [{"x": 1}], None), "experiment", id="experiment-none"),
    pytest.param(lambda t: create_jobs(t, [{"x": 1}], "no_such_mod_xyz:main"), "no_such_mod_xyz", id="experiment-missing"),
    pytest.param(lambda t: create_jobs(t, [{"x": 1}], E, priority="1"), "priority", id="priority-str"),
    pytest.param(lambda t: create_jobs(t, [{"x": 1}], E, priority=float("nan")), "priority", id="priority-nan"),
    pytest.param(lambda t: create_jobs(t, [{"x": 1}], E, priority=True), "priority", id="priority-bool"),
    pytest.param(lambda t: create_jobs(t, [{"x": 1}], E, priority=float("inf")), "priority", id="priority-inf"),
    pytest.param(lambda t: create_jobs(t, [{"x": 1}], E, duplicates="maybe"), "duplicates", id="duplicates"),
    pytest.param(lambda t: create_jobs(t, [{"x": 1}], E, name="../{x}"), "inside the tree", id="name-dotdot"),
    pytest.param(lambda t: create_jobs(t, [{"x": "a\x00b"}], E, name="{x}"), "inside the tree", id="name-nul"),
    pytest.param(lambda t: create_jobs(t, [{"x": "/etc"}], E, name="{x}"), "inside the tree", id="name-abs"),
    pytest.param(lambda t: create_jobs(t, [{"x": "a\\b"}], E, name="{x}"), "inside the tree", id="name-backslash"),
    pytest.param(lambda t: create_jobs(t, [{"x": 1}, {"x": "."}], E, name="{x}"), "inside the tree", id="name-dot"),
    pytest.param(lambda t: create_jobs(t, [{"x": 1}], E, name=5), "name", id="name-int"),
    pytest.param(lambda t: create_jobs(None, [{"x": 1}], E), "tree", id="tree-none"),
    pytest.param(lambda t: create_jobs(t, [{"x": 10 ** 5000}], E), "x", id="int-too-big"),
    pytest.param(lambda t: create_jobs(t, [{"x": "\ud800"}], E), "x", id="lone-surrogate"),
    pytest.param(lambda t: create_jobs(t, [{"x": _nest(150)}], E), "deep", id="deeper-than-readers-allow"),
    pytest.param(lambda t: create_jobs(t, [{"x": list(range(jd.MAX_NODES + 10))}], E), "values",
                 id="more-values-than-readers-allow"),
    pytest.param(lambda t: create_jobs(t, [{"x": _nest(5000)}], E), "deep", id="5000-deep"),
    pytest.param(lambda t: create_jobs(t, [_self_referencing()], E), "me", id="self-referencing"),
]


@pytest.fixture
def api_area(tmp_path):
    tree = tmp_path / "tree"
    return tmp_path, tree


@pytest.mark.parametrize("call, fragment", API_CASES)
def test_python_api_bad_input(api_area, call, fragment):
    base, tree = api_area
    before = snapshot(str(base))
    with pytest.raises(DbdictError) as info:
        call(str(tree))
    message = str(info.value)
    assert "\n" not in message and fragment in message, message
    assert snapshot(str(base)) == before, "a rejected create wrote something"


def test_str_subclasses_are_stored_as_plain_text(api_area):
    """numpy.str_ and friends are converted, not refused: the job stores plain strings."""
    _, tree = api_area
    result = create_jobs(str(tree), [{_Text("k"): _Text("resnet"), "x": [_Text("a")]}], E)
    state = jd.read_latest_state(result.created[0])[1]
    assert state["k"] == "resnet" and state["x"] == ["a"]


@pytest.fixture
def one_job(tmp_path):
    return create_jobs(tmp_path / "tree", [{"x": 1}], E).created[0]


RUN_API_CASES = [
    (dict(lease=-1), "--lease"),
    (dict(lease=0), "--lease"),
    (dict(lease=float("nan")), "--lease"),
    (dict(lease=float("inf")), "--lease"),
    (dict(lease="600"), "--lease"),
    (dict(lease=True), "--lease"),
    (dict(lease=10, heartbeat=3), "fifth"),
    (dict(heartbeat=-1), "--heartbeat"),
    (dict(grace=-1), "--grace"),
    (dict(grace=float("inf")), "--grace"),
    (dict(max_runtime="1"), "--max-runtime"),
    (dict(save_every=float("nan")), "--save-every"),
    (dict(max_attempts=0), "--max-attempts"),
    (dict(max_attempts=2.0), "--max-attempts"),
    (dict(max_attempts=True), "--max-attempts"),
    (dict(max_resumes=-1), "--max-resumes"),
    (dict(restart_priority="2"), "priority"),
    pytest.param(dict(restart_priority=float("nan")), "priority"),
    (dict(scratch="/no/such/dir"), "--scratch"),
    (dict(leese=600), "did you mean 'lease'"),
]


@pytest.mark.parametrize("options, fragment", RUN_API_CASES)
def test_run_job_and_work_options(one_job, options, fragment):
    from dbdict_fs import run_job, work

    before = snapshot(one_job)
    for call in (lambda: run_job(one_job, **options), lambda: work(os.path.dirname(os.path.dirname(one_job)), **options)):
        with pytest.raises(DbdictError) as info:
            call()
        assert fragment in str(info.value), str(info.value)
    assert snapshot(one_job) == before


@pytest.mark.parametrize("path, fragment", [("no/such", "no such"), ("afile", "afile")])
def test_run_job_and_work_paths(tmp_path, path, fragment):
    from dbdict_fs import run_job, work

    (tmp_path / "afile").write_text("x")
    for call in (run_job, work):
        with pytest.raises(DbdictError) as info:
            call(str(tmp_path / path))
        assert fragment in str(info.value)


@pytest.mark.parametrize("max_jobs", [0, -1, 1.5, True, "3"])
def test_work_max_jobs(one_job, max_jobs):
    from dbdict_fs import work

    with pytest.raises(DbdictError, match="max-jobs"):
        work(os.path.dirname(os.path.dirname(one_job)), max_jobs=max_jobs)


@pytest.mark.skipif(not have("index"), reason="dbdict_fs.index not written yet")
@pytest.mark.parametrize("call, fragment", [
    (lambda idx: idx.filter_by(nosuchcolumn=1), "nosuchcolumn"),
    (lambda idx: idx.where("x >"), ""),
    (lambda idx: idx.where("x = 1 or 1=1; drop table jobs"), ""),
    (lambda idx: idx.all_ordered_by("nosuchcolumn"), "nosuchcolumn"),
    (lambda idx: idx.select(sort="-nosuchcolumn"), "nosuchcolumn"),
])
def test_index_api_bad_input(one_job, call, fragment):
    from dbdict_fs import build_index

    idx = build_index(os.path.dirname(os.path.dirname(one_job)), cache=False)
    with pytest.raises(DbdictError) as info:
        call(idx)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(not have("index"), reason="dbdict_fs.index not written yet")
@pytest.mark.parametrize("tree", ["no/such", "afile"])
def test_build_index_bad_tree(tmp_path, tree):
    from dbdict_fs import build_index

    (tmp_path / "afile").write_text("x")
    with pytest.raises(DbdictError) as info:
        build_index(str(tmp_path / tree))
    message = str(info.value)
    assert str(tmp_path / tree) in message and "\n" not in message
    assert ("no such" if tree == "no/such" else "not a directory") in message, message

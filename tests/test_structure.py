"""The package's shape: one owner per decision, modules that do one job (issue 19).

Read from the source with `ast`, so a new import or a second spelling of a name fails here
before it becomes the next defect."""

import ast
import os
import re

import pytest

import dbdict_fs
from dbdict_fs import options

PACKAGE = os.path.dirname(dbdict_fs.__file__)


def imports_of(module):
    """The package modules `module` imports, at any level of its code."""
    with open(os.path.join(PACKAGE, module + ".py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dbdict_fs."):
            out.add(node.module.split(".")[1])
    return out


def source(module):
    with open(os.path.join(PACKAGE, module + ".py"), encoding="utf-8") as f:
        return f.read()


def strings(module):
    """The string literals of `module`'s code (f-string parts included), docstrings left out."""
    tree = ast.parse(source(module))
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def modules():
    return sorted(f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py"))


@pytest.mark.parametrize("module", ["booking", "index", "discovery", "runner", "workdir", "jobdir"])
def test_the_protocol_does_not_import_the_submit_code(module):
    assert "slurm" not in imports_of(module), f"{module} imports slurm: ask `scheduler` instead"


def test_only_errors_defines_exit_codes():
    for module in modules():
        text = source(module)
        assert not re.search(r"^EXIT_[A-Z_]+\s*=", text, re.M), f"{module} defines its own exit codes"
        assert not re.search(r"\breturn [2-4]\b", text), f"{module} returns a bare exit code: use ExitCode"


@pytest.mark.parametrize("name", [".tok.", ".tmp.", "==== dbdict attempt", "claim.", "history."])
def test_file_names_are_spelled_in_jobdir_only(name):
    spelled = [m for m in modules() if m != "jobdir" and any(name in s for s in strings(m))]
    assert not spelled, f"{name!r} is spelled outside jobdir, in {spelled}"


def test_worker_options_are_declared_once():
    """The CLI, runner.Options and submit take the options from options.WORKER_OPTIONS: no
    module but options declares one of them as an argument (`-q/--quiet` is every command's)."""
    for module in modules():
        if module == "options":
            continue
        for o in options.WORKER_OPTIONS:
            if o.name == "quiet":
                continue
            assert f'"{o.flag}"' not in source(module), f"{module} declares {o.flag} itself"


def test_runner_options_take_every_declared_option_and_only_those():
    from dbdict_fs.errors import UsageError
    from dbdict_fs.runner import Options

    opts = Options()
    assert set(vars(opts)) == {o.name for o in options.WORKER_OPTIONS}
    with pytest.raises(UsageError, match="did you mean 'grace'"):
        Options(grayce=1)


def test_what_follows_a_commit_is_one_function():
    """Removing older states, marking final, hinting: discovery.after_commit, called by the
    runner and by commands, never spelled again beside a write_state."""
    for module in ("runner", "ops", "searches", "pool"):
        calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", None)
                 for n in ast.walk(ast.parse(source(module))) if isinstance(n, ast.Call)}
        assert not calls & {"remove_older_states", "mark_final", "hint"}, module


def test_the_index_asks_booking_without_forging_a_state():
    """held / runnable / stale is booking's alone (DESIGN 4): the index hands it what it
    read (listing epochs, the state's fields, the claim's token), never a made-up state
    `{"dbdict": ...}`, and never judges the scheduler-gone path on the state's cluster_job."""
    tree = ast.parse(source("index"))
    forged = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Dict)
              and any(isinstance(k, ast.Constant) and k.value == "dbdict" for k in n.keys)]
    assert not forged, f"index.py builds a state for booking at line(s) {forged}"
    assert "dbdict.cluster_job" not in strings("index"), "index.py judges a holder by the state's cluster_job"


def test_the_shepherd_does_not_import_booking():
    assert "booking" not in imports_of("shepherd"), "shepherd imports booking: procs has what it needs"


@pytest.mark.parametrize("spelling", ["time.CLOCK_BOOTTIME", "CDLL(None", "/stat\""])
def test_process_facts_are_read_in_procs_only(spelling):
    """The clock the fence counts on, prctl and /proc/<pid>/stat: one copy, in procs."""
    found = [m for m in modules() if m != "procs" and spelling in "".join(
        line for line in source(m).splitlines(keepends=True) if not line.lstrip().startswith("#"))]
    assert not found, f"{spelling} in {found}"


def test_test_seams_are_read_in_seams_only():
    """Every DBDICT_TEST_* variable is read once, in seams.py, which lists them all."""
    readers = [m for m in modules() if m != "seams" and any(s.startswith("DBDICT_TEST_") for s in strings(m))]
    assert not readers, f"test seams read outside seams.py: {readers}"


def test_every_import_inside_the_package_names_something_that_exists():
    """`from .mod import name`, at any level of the code (imports inside functions too):
    `name` is defined in `mod`. Merges that renamed a function broke three callers this way,
    each found only when its command ran."""
    import importlib

    missing = []
    for module in modules():
        for node in ast.walk(ast.parse(source(module))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                target = importlib.import_module(f"dbdict_fs.{node.module}")
                missing += [f"{module}: from .{node.module} import {a.name}" for a in node.names
                            if a.name != "*" and not hasattr(target, a.name)]
    assert not missing, missing

"""create_jobs and `dbdict create`: one directory per distinct config, written atomically."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from dbdict_fs import create_jobs
from dbdict_fs.errors import ExperimentError, UsageError
from dbdict_fs.values import config_hash, parse_grid

from conftest import EXPERIMENTS, experiment, jobdirs, read_state, run_cli


def test_layout_and_files(tree):
    result = create_jobs(tree, [{"x": 1, "model": {"arch": "mlp", "depth": 2}}], experiment("double"))
    assert len(result.created) == 1 and result.skipped == []
    path = result.created[0]
    digest = config_hash({"x": 1, "model": {"arch": "mlp", "depth": 2}}, experiment("double"))
    assert path == os.path.join(str(tree), digest[:2], digest)
    assert sorted(os.listdir(path)) == ["config.yaml", "state.0.yaml", "state.yaml", "stderr", "stdout", "workdir",
                                        "workdir.0"]
    assert os.readlink(os.path.join(path, "state.yaml")) == "state.0.yaml"
    # the per-attempt layout from the start (DESIGN.md 5.1): workdir -> workdir.0, named in state 0
    assert os.readlink(os.path.join(path, "workdir")) == "workdir.0" and os.path.isdir(os.path.join(path, "workdir.0"))
    config = yaml.safe_load(open(os.path.join(path, "config.yaml")))
    assert config["x"] == 1 and config["model"] == {"arch": "mlp", "depth": 2}
    assert config["dbdict"]["experiment"] == experiment("double")
    assert config["dbdict"]["hash"] == digest
    # the state is indented JSON (valid YAML too) holding every config key
    text = open(os.path.join(path, "state.0.yaml")).read()
    state = json.loads(text)
    assert yaml.safe_load(text) == state
    assert state["x"] == 1 and state["model"]["depth"] == 2
    assert state["dbdict"]["status"] == "ready" and state["dbdict"]["epoch"] == 0
    assert state["dbdict"]["priority"] == 1.0 and state["dbdict"]["hash"] == digest
    assert state["dbdict"]["workdir"] == "workdir.0"


def test_duplicates_skipped_in_generator_and_tree(tree):
    configs = [{"x": 1}, {"x": 2}, {"x": 1}]
    first = create_jobs(tree, configs, experiment("double"))
    assert len(first.created) == 2
    second = create_jobs(tree, [{"x": 2}, {"x": 3}], experiment("double"))
    assert len(second.created) == 1 and len(second.skipped) == 1
    assert len(jobdirs(tree)) == 3
    # the same config with another experiment is another job
    third = create_jobs(tree, [{"x": 1}], experiment("fails"))
    assert len(third.created) == 1


def test_hash_ignores_key_order(tree):
    a = create_jobs(tree, [{"a": 1, "b": {"c": 2, "d": 3}}], experiment("double"))
    b = create_jobs(tree, [{"b": {"d": 3, "c": 2}, "a": 1}], experiment("double"))
    assert b.created == [] and b.skipped == a.created


def test_name_template(tree):
    configs = [{"lr": lr, "seed": s, "model": {"arch": "mlp"}} for lr in (0.1, 0.01) for s in (1, 2)]
    result = create_jobs(tree, configs, experiment("double"), name="{model.arch}/lr{lr}_s{seed}")
    assert sorted(os.path.relpath(p, tree) for p in result.created) == [
        "mlp/lr0.01_s1", "mlp/lr0.01_s2", "mlp/lr0.1_s1", "mlp/lr0.1_s2"]
    # duplicates are found by hash even under a named layout
    again = create_jobs(tree, configs[:1], experiment("double"), name="other/{seed}")
    assert again.created == [] and len(again.skipped) == 1


@pytest.mark.parametrize("template", ["../escape{x}", "/abs/{x}", "a/../../{x}", "{x}/.hidden", "a//{x}"])
def test_name_template_cannot_escape(tree, template):
    with pytest.raises(UsageError):
        create_jobs(tree, [{"x": 1}], experiment("double"), name=template)
    assert not os.path.exists(tree) or jobdirs(tree) == []


def test_name_template_value_cannot_escape(tree):
    with pytest.raises(UsageError, match="inside the tree"):
        create_jobs(tree, [{"x": "../../etc"}], experiment("double"), name="{x}")


def test_name_template_collision_is_an_error(tree):
    with pytest.raises(UsageError, match="two different configs"):
        create_jobs(tree, [{"x": 1, "y": 1}, {"x": 1, "y": 2}], experiment("double"), name="x{x}")
    assert jobdirs(tree) == []


@pytest.mark.parametrize("config, message", [
    ({"dbdict": 1}, "reserved"),
    ({"bad-key": 1}, "not an identifier"),
    ({"a": {"b c": 1}}, "not an identifier"),
    ({"x": float("nan")}, "NaN"),
    ({"x": float("inf")}, "NaN"),
    ({"x": object()}, "type object"),
    ({"x": {1, 2}}, "type set"),
    ({1: 2}, "not an identifier"),
])
def test_bad_configs_write_nothing(tree, config, message):
    with pytest.raises(UsageError, match=message):
        create_jobs(tree, [{"ok": 1}, config], experiment("double"))
    assert not os.path.exists(tree) or jobdirs(tree) == []


def test_date_value_rejected(tree):
    import datetime

    with pytest.raises(UsageError, match="quote it"):
        create_jobs(tree, [{"day": datetime.date(2026, 1, 1)}], experiment("double"))


def test_generator_raising_writes_nothing_and_says_so(tree):
    def gen():
        yield {"x": 1}
        raise RuntimeError("boom")

    with pytest.raises(UsageError, match="RuntimeError: boom.*after 1 configs"):
        create_jobs(tree, gen(), experiment("double"))
    assert not os.path.exists(tree) or jobdirs(tree) == []


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "module:attr"),
    ("missing_file.py:main", "not found"),
    (os.path.join(EXPERIMENTS, "exps.py") + ":nope", "defines no"),
    ("no_such_module_xyz:main", "not found"),
    ("os:path:x", "not a"),
])
def test_bad_experiment_specs(tree, spec, message):
    with pytest.raises(ExperimentError, match=message):
        create_jobs(tree, [{"x": 1}], spec)


def test_module_experiment_records_pythonpath(tree, tmp_path):
    (tmp_path / "mymod.py").write_text("def main(state, channel):\n    state.result = 1\n")
    result = create_jobs(tree, [{"x": 1}], "mymod:main", cwd=str(tmp_path))
    state = read_state(result.created[0])
    assert state["dbdict"]["experiment"] == "mymod:main"
    assert state["dbdict"]["pythonpath"] == [str(tmp_path)]


def test_relative_file_experiment_made_absolute(tree, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "train.py").write_text("def main(state, channel):\n    pass\n")
    result = create_jobs(tree, [{"x": 1}], "sub/train.py:main", cwd=str(tmp_path))
    assert read_state(result.created[0])["dbdict"]["experiment"] == f"{tmp_path}/sub/train.py:main"


def test_dry_run_writes_nothing(tree):
    result = create_jobs(tree, [{"x": 1}, {"x": 2}], experiment("double"), dry_run=True)
    assert len(result.created) == 2
    assert not os.path.exists(tree)


def test_grid_parsing():
    assert parse_grid(["lr={0.1,0.01}", "seed={1,2,3}"]) == [
        {"lr": lr, "seed": s} for lr in (0.1, 0.01) for s in (1, 2, 3)]
    # bash expands an unquoted lr={0.1,0.01} into lr=0.1 lr=0.01: the same grid
    assert parse_grid(["lr=0.1", "lr=0.01"]) == [{"lr": 0.1}, {"lr": 0.01}]
    assert parse_grid(["model.arch=resnet", "flag=true", "name=abc", "day=2026-01-01", "n=null"]) == [
        {"model": {"arch": "resnet"}, "flag": True, "name": "abc", "day": "2026-01-01", "n": None}]
    assert parse_grid(["layers={[1,2],[3]}"]) == [{"layers": [1, 2]}, {"layers": [3]}]
    with pytest.raises(UsageError):
        parse_grid(["novalue"])


def test_cli_create_from_source_and_grid(tree):
    src = f"{os.path.join(EXPERIMENTS, 'exps.py')}:sweep"
    proc = run_cli("create", tree, src, "--experiment", experiment("double"), "seed={1,2}")
    assert proc.returncode == 0, proc.stderr
    created = proc.stdout.splitlines()
    assert len(created) == 6 and all(os.path.isdir(p) for p in created)
    assert "created 6, skipped 0 duplicates" in proc.stderr
    again = run_cli("create", tree, src, "-e", experiment("double"), "seed=1", "seed=2", "--print-commands")
    assert again.returncode == 0 and again.stdout == ""
    assert "created 0, skipped 6 duplicates" in again.stderr
    states = [read_state(p) for p in created]
    assert sorted((s["x"], s["seed"], s["model"]["depth"]) for s in states) == [
        (x, s, x) for x in (1, 2, 3) for s in (1, 2)]


def test_cli_create_print_commands_and_dry_run(tree):
    proc = run_cli("create", tree, "-e", experiment("double"), "x={1,2}", "--print-commands", "--dry-run")
    assert proc.returncode == 0
    assert [line.split()[:2] for line in proc.stdout.splitlines()] == [["dbdict-run-job", "run"]] * 2
    assert "would create 2" in proc.stderr
    assert not os.path.exists(tree)


@pytest.mark.parametrize("args, message", [
    (["create"], "required"),
    (["create", "{tree}", "x=1"], "--experiment"),
    (["create", "{tree}", "-e", "nowhere.py:main", "x=1"], "not found"),
    (["create", "{tree}", "-e", "{exp}", "bad-key=1"], "key=value"),
    (["create", "{tree}", "-e", "{exp}", "x=1", "--priority", "high"], "number"),
    (["create", "{tree}", "-e", "{exp}", "x=1", "--name", "../x"], "inside the tree"),
    (["create", "{tree}", "{src}:nothing_here", "-e", "{exp}"], "has no attribute"),
    (["create", "{tree}", "-e", "{exp}", "x=1", "--bogus"], "unrecognized"),
    (["nosuchcommand"], "invalid choice"),
])
def test_cli_create_bad_input(tree, args, message):
    fill = {"tree": str(tree), "exp": experiment("double"), "src": os.path.join(EXPERIMENTS, "exps.py")}
    proc = run_cli(*[a.format(**fill) for a in args])
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tree)


def test_interrupted_create_leaves_only_complete_jobs(tree):
    """kill -9 in the middle of a large create: every job directory present is complete."""
    code = f"""
import sys
sys.path.insert(0, {EXPERIMENTS!r})
from dbdict_fs import create_jobs
create_jobs({str(tree)!r}, ({{"i": i, "pad": "x" * 2000}} for i in range(100000)), {experiment("double")!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while time.time() < deadline:
        if os.path.isdir(tree) and len([d for d in os.listdir(tree) if not d.startswith(".")]) > 20:
            break
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    jobs = jobdirs(tree)
    assert jobs, "the create was killed before it wrote anything: the test proves nothing"
    for path in jobs:
        names = set(os.listdir(path))
        assert {"config.yaml", "state.0.yaml", "state.yaml", "stdout", "stderr", "workdir"} <= names, path
        state = read_state(path)
        assert state["dbdict"]["status"] == "ready"
    # leftovers, if any, are dot directories that no tool takes for a job
    assert all(name.startswith(".") or len(name) == 2 for name in os.listdir(tree))
    # and a second create completes the sweep's first jobs without duplicates
    again = create_jobs(tree, [{"i": i, "pad": "x" * 2000} for i in range(len(jobs) + 5)], experiment("double"))
    assert len(again.created) + len(again.skipped) == len(jobs) + 5
    assert len(jobdirs(tree)) >= len(jobs) + 5 - 0


def test_class_defaults_check_keys_and_print(tree):
    bad = run_cli("create", tree, "-e", experiment("Counter"), "nn=3")
    assert bad.returncode == 2 and "unknown key 'nn'" in bad.stderr and "did you mean 'n'" in bad.stderr
    nested = run_cli("create", tree, "-e", experiment("Counter"), "opt.lrr=3")
    assert nested.returncode == 2 and "unknown key 'opt.lrr'" in nested.stderr
    assert not os.path.exists(tree)
    skip = run_cli("create", tree, "-e", experiment("Counter"), "nn=3", "--no-check-keys")
    assert skip.returncode == 0
    defaults = run_cli("create", tree, "-e", experiment("Counter"), "--print-defaults")
    assert yaml.safe_load(defaults.stdout) == {"n": 3, "opt": {"lr": 0.1}}
    config = run_cli("cmdline", experiment("Counter"), "n=5", "--print-config")
    assert yaml.safe_load(config.stdout) == {"n": 5, "opt": {"lr": 0.1}}
    # function experiments are never imported at creation and accept any key
    assert run_cli("create", tree, "-e", experiment("double"), "anything=1").returncode == 0


def test_named_job_clashing_with_another_config_is_refused(tree):
    create_jobs(tree, [{"lr": 0.1, "seed": 1}], experiment("double"), name="lr{lr}")
    with pytest.raises(UsageError, match="already holds a different job"):
        create_jobs(tree, [{"lr": 0.1, "seed": 2}], experiment("double"), name="lr{lr}")
    with pytest.raises(UsageError, match="inside the job.*nothing was written"):
        create_jobs(tree, [{"p": "c"}, {"p": "c/d"}], experiment("double"), name="{p}")
    assert len(jobdirs(tree)) == 1

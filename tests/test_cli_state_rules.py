"""What an experiment may not put in its state, refused readably: overwriting a config key,
and values a state file cannot hold (a datetime), named by key."""

import pytest

from conftest import read_state, run_cli

from dbdict_fs.values import changed_config_key, unstorable

EXPS = '''
import datetime

def overwrites(state, channel):
    state.lr = 99
    state.result = 1

def overwrites_nested(state, channel):
    state.model.depth = 3

def saves_a_datetime(state, channel):
    state.when = datetime.datetime(2026, 1, 1)
    state.saved = channel.save()

def returns_a_datetime(state, channel):
    state.m = {"when": datetime.date(2026, 1, 1)}

def honest(state, channel):
    state.valid_err = 0.5
    state.lr_used = state.lr
'''


@pytest.fixture
def exps(tmp_path, monkeypatch):
    monkeypatch.setenv("DBDICT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "sexps.py").write_text(EXPS)
    return tmp_path


def run_one(exps, tree, name):
    created = run_cli("create", tree, "-e", f"sexps.py:{name}", "lr=0.1", "model.depth=18", cwd=exps)
    assert created.returncode == 0, created.stderr
    job = created.stdout.strip()
    return job, run_cli("run", job, cwd=exps)


@pytest.mark.parametrize("name, key", [("overwrites", "'lr' (0.1 -> 99)"),
                                       ("overwrites_nested", "'model.depth' (18 -> 3)")])
def test_overwriting_a_config_key_fails_the_job_and_keeps_the_config(exps, tree, name, key):
    job, proc = run_one(exps, tree, name)
    assert proc.returncode == 1, proc.stderr
    state = read_state(job)
    assert state["dbdict"]["status"] == "failed"
    assert f"overwrote the config key {key}" in state["dbdict"]["error"]
    assert state["lr"] == 0.1 and state["model"]["depth"] == 18  # the filters still tell the truth
    rows = run_cli(tree, "lr=0.1", "--format", "csv", "--columns", "status", prog="dbdict-query")
    assert rows.stdout.splitlines() == ["dbdict.status", "failed"]


def test_an_honest_experiment_is_not_refused(exps, tree):
    job, proc = run_one(exps, tree, "honest")
    assert proc.returncode == 0, proc.stderr
    assert read_state(job)["valid_err"] == 0.5


def test_a_datetime_is_refused_at_save_naming_the_key(exps, tree):
    job, proc = run_one(exps, tree, "saves_a_datetime")
    assert proc.returncode == 1
    error = read_state(job)["dbdict"]["error"]
    assert "state key 'when' has a value of type datetime" in error, error
    assert "state.saved = channel.save()" in open(f"{job}/stderr").read()  # the traceback points at it


def test_a_datetime_returned_fails_the_job_naming_the_key(exps, tree):
    job, proc = run_one(exps, tree, "returns_a_datetime")
    assert proc.returncode == 1
    assert "state key 'm.when' has a value of type date" in read_state(job)["dbdict"]["error"]


def test_the_rules_directly():
    assert changed_config_key({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 2}, "r": 3}) is None
    assert "'a'" in changed_config_key({"a": 1}, {"a": True})
    assert "removed" in changed_config_key({"a": 1}, {})
    assert unstorable({"a": [1, {"b": object()}]}) .startswith("state key 'a[1].b'")
    assert unstorable({"a": [1, 2.5, None, "x"]}) is None

"""Answers that used to be silently wrong: numpy values in a generator, a tree that is not
one, a worker whose every job failed."""

import os

import pytest

from conftest import experiment, jobdirs, read_state, run_cli


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DBDICT_CACHE_DIR", str(tmp_path / "cache"))


def test_numpy_values_in_a_generator_are_converted(tree, tmp_path):
    np = pytest.importorskip("numpy")
    (tmp_path / "gen.py").write_text(
        "import numpy as np\n"
        "def jobs():\n"
        "    for i in range(2):\n"
        "        yield {'lr': np.float64(0.1) * (i + 1), 'n': np.int64(i), 'w': np.arange(2), 'ok': np.bool_(True)}\n")
    proc = run_cli("create", tree, "gen.py:jobs", "-e", experiment("double"), "x=1", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    states = sorted((read_state(j) for j in jobdirs(tree)), key=lambda s: s["n"])
    assert [(s["lr"], s["n"], s["w"], s["ok"], s["x"]) for s in states] == [
        (0.1, 0, [0, 1], True, 1), (0.2, 1, [0, 1], True, 1)]
    assert type(states[0]["n"]) is int and np is not None


def test_an_empty_tree_made_by_create_is_a_tree(tree, tmp_path):
    (tmp_path / "gen.py").write_text("def none():\n    return []\n")
    proc = run_cli("create", tree, "gen.py:none", "-e", experiment("double"), cwd=tmp_path)
    assert proc.returncode == 0 and "created 0" in proc.stderr, proc.stderr
    assert os.path.isdir(os.path.join(tree, ".dbdict"))
    status = run_cli("status", tree, "--format", "json")
    assert status.returncode == 0 and '"total": 0' in status.stdout, status.stderr
    assert run_cli("work", tree).returncode == 0
    assert run_cli(tree, "--format", "json", prog="dbdict-query").stdout.strip() == "[]"


def test_work_exits_1_when_every_job_it_ran_failed(tree):
    assert run_cli("create", tree, "-e", experiment("double"), "x={1,2}").returncode == 0
    assert run_cli("create", tree, "-e", experiment("fails"), "x=3").returncode == 0
    proc = run_cli("work", tree, "x=3")
    assert proc.returncode == 1 and "1 failed" in proc.stderr, (proc.returncode, proc.stderr)
    mixed = run_cli("work", tree)
    assert mixed.returncode == 0 and "2 done" in mixed.stderr, mixed.stderr


def test_allow_duplicates_adds_a_config_already_in_the_tree(tree):
    assert run_cli("create", tree, "-e", experiment("double"), "x=1").returncode == 0
    again = run_cli("create", tree, "-e", experiment("double"), "x=1", "--allow-duplicates")
    assert again.returncode == 0 and "created 1, skipped 0" in again.stderr, again.stderr
    plain = run_cli("create", tree, "-e", experiment("double"), "x=1")
    assert "created 0, skipped 1" in plain.stderr
    assert len(jobdirs(tree)) == 2


def test_the_suites_one_wait_for_returns_the_value_or_fails_loudly():
    from conftest import wait_for

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise FileNotFoundError("being replaced")
        return "value"

    assert wait_for(flaky, timeout=10, interval=0) == "value"
    with pytest.raises(AssertionError, match="waiting for nothing .*last error: KeyError"):
        wait_for(lambda: {}["x"], timeout=0.1, what="nothing")

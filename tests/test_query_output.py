"""What query prints: NaN results as nan, and a plain table (never wrapped) off a terminal."""

import io
import json
import time

import pytest

from conftest import run_cli

from dbdict_fs import output


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DBDICT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def nan_tree(tree, tmp_path):
    (tmp_path / "nx.py").write_text(
        "def main(state, channel):\n"
        "    state.valid_err = float('nan') if state.x == 1 else 0.5\n"
        "    state.note = 'a long text value that a narrow terminal would wrap ' * 2\n")
    assert run_cli("create", tree, "-e", "nx.py:main", "x={1,2}", cwd=tmp_path).returncode == 0
    assert run_cli("work", tree, "-q").returncode == 0
    return tree


def test_nan_results_print_as_nan_not_as_missing(nan_tree):
    table = run_cli(nan_tree, "--columns", "x,valid_err", prog="dbdict-query").stdout.splitlines()
    assert sorted(line.split() for line in table[2:]) == [["1", "nan"], ["2", "0.5"]], table
    csv = run_cli(nan_tree, "--columns", "x,valid_err", "--format", "csv", prog="dbdict-query").stdout
    assert sorted(csv.splitlines()) == ["1,nan", "2,0.5", "x,valid_err"]
    rows = json.loads(run_cli(nan_tree, "--columns", "x,valid_err", "--format", "json", prog="dbdict-query").stdout)
    assert sorted(rows, key=lambda r: r["x"]) == [{"x": 1, "valid_err": "NaN"}, {"x": 2, "valid_err": 0.5}]
    # in SQL, NaN is NULL (SQLite has no NaN): a filter on it does not match
    assert run_cli(nan_tree, "--where", "valid_err > 0.1", "--format", "csv", "--columns", "x",
                   prog="dbdict-query").stdout.splitlines() == ["x", "2"]


def test_a_piped_table_is_plain_and_never_wraps(nan_tree):
    proc = run_cli(nan_tree, prog="dbdict-query", env={"COLUMNS": "30"})
    lines = proc.stdout.splitlines()
    assert len(lines) == 4, proc.stdout  # header, rule, one line per job
    assert lines[0].split() == ["note", "valid_err", "x", "dbdict.status", "dbdict.path"]
    assert "│" not in proc.stdout
    assert sorted(" nan " in line for line in lines[2:]) == [False, True]


def test_a_large_plain_table_costs_about_what_csv_costs():
    rows = [{"lr": i / 7, "seed": i, "model.arch": "resnet", "valid_err": 1 / (i + 1), "path": f"t/{i:05}"}
            for i in range(5000)]

    def cost(fmt):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            output.print_rows(rows, list(rows[0]), fmt, file=io.StringIO())
            best = min(best, time.perf_counter() - start)
        return best

    assert cost("table") < 5 * cost("csv") + 0.02


def test_select_takes_filters_not_a_namespace(nan_tree):
    import argparse

    from dbdict_fs import query

    by_keywords = query.select(nan_tree, ["x=2"], where="valid_err > 0.1", no_cache=True)
    assert [r["x"] for r in by_keywords] == [2]
    assert [r["x"] for r in query.select(nan_tree, {"x": 1})] == [1]
    args = argparse.Namespace(filters=["x=2"], where=None, sort=None, limit=None, no_cache=False)
    assert [r["x"] for r in query.select(nan_tree, **query.selection(args))] == [2]
    assert [r["x"] for r in query.select(nan_tree, args)] == [2]  # the old call still works
    with pytest.raises(Exception, match="no such status"):
        query.select(nan_tree, ["status=finished"])

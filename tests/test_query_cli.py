"""`dbdict query` / `dbdict-query` as real processes: filters, --where, --sql, sorting, formats."""

import csv
import io
import json
import os

import pytest

from conftest import run_cli
from test_index import TOKEN, backdate, make_job

from dbdict_fs import jobdir as jd
from dbdict_fs.cli import fix_negative_sort
from dbdict_fs.query import parse_value

from procs import token_dead_here


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DBDICT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def sweep(tree):
    """Five jobs: done ones with results, a ready one, a stale one and a corrupt one."""
    jobs = {}
    for i, (lr, arch, err) in enumerate([(0.1, "resnet", 0.3), (0.01, "resnet", 0.1), (0.001, "mlp", 0.2)]):
        jobs[f"done{i}"] = make_job(tree, {"lr": lr, "seed": i, "model": {"arch": arch, "depth": 18}},
                                    status="done", epoch=1, claims=[TOKEN], results={"valid_err": err})
    jobs["ready"] = make_job(tree, {"lr": 0.5, "seed": 9, "model": {"arch": "mlp", "depth": 50}})
    jobs["stale"] = make_job(tree, {"lr": 0.5, "seed": 10, "model": {"arch": "vit", "depth": 1}},
                             status="running", epoch=1, claims=[token_dead_here()], host="otherhost")
    jobs["corrupt"] = make_job(tree, {"lr": 0.5, "seed": 11})
    with open(os.path.join(jobs["corrupt"], "state.0.yaml"), "w") as f:
        f.write('{"truncated": ')
    return str(tree), jobs


def query(*args, prog="dbdict"):
    if prog == "dbdict":
        args = ("query",) + args
    return run_cli(*args, prog=prog)


def ok(*args, **kw):
    proc = query(*args, **kw)
    assert proc.returncode == 0, proc.stderr
    return proc


def jsonrows(*args):
    return json.loads(ok(*args, "--format", "json").stdout)


def test_filters_are_typed_like_yaml_and_anded(sweep):
    tree, jobs = sweep
    assert [r["seed"] for r in jsonrows(tree, "lr=0.01")] == [1]
    assert [r["seed"] for r in jsonrows(tree, "model.arch=resnet", "lr=0.1")] == [0]
    assert sorted(r["seed"] for r in jsonrows(tree, "status=done")) == [0, 1, 2]
    assert [r["dbdict.path"] for r in jsonrows(tree, "dbdict.status=stale")] == [jobs["stale"]]
    assert [r["seed"] for r in jsonrows(tree, "status=corrupt")] == [11]
    assert jsonrows(tree, "lr=0.01", "seed=2") == []


def test_where_and_positional_filters_after_options(sweep):
    tree, _ = sweep
    rows = jsonrows(tree, "--where", 'lr > 0.001 and model.arch == "resnet"', "seed=1")
    assert [r["seed"] for r in rows] == [1]


def test_sort_descending_as_written_limit_and_columns(sweep):
    tree, _ = sweep
    rows = jsonrows(tree, "status=done", "--sort", "-valid_err", "--limit", "2", "--columns", "seed,valid_err")
    assert rows == [{"seed": 0, "valid_err": 0.3}, {"seed": 2, "valid_err": 0.2}]
    rows = jsonrows(tree, "--sort", "valid_err", "--columns", "seed")
    assert [r["seed"] for r in rows][:3] == [1, 2, 0]  # NULLs last
    assert fix_negative_sort(["t", "--sort", "-x", "--", "--sort", "-y"]) == ["t", "--sort=-x", "--", "--sort", "-y"]


def test_every_format_parses_back(sweep):
    tree, _ = sweep
    args = (tree, "status=done", "--sort", "seed", "--columns", "seed,lr,model.arch,valid_err,status")
    as_json = json.loads(ok(*args, "--format", "json").stdout)
    assert as_json[0] == {"seed": 0, "lr": 0.1, "model.arch": "resnet", "valid_err": 0.3, "dbdict.status": "done"}
    lines = ok(*args, "--format", "jsonl").stdout.splitlines()
    assert [json.loads(line) for line in lines] == as_json
    table = list(csv.DictReader(io.StringIO(ok(*args, "--format", "csv").stdout)))
    assert [(r["seed"], r["model.arch"], float(r["valid_err"])) for r in table] == [
        (str(r["seed"]), r["model.arch"], r["valid_err"]) for r in as_json]
    assert list(table[0]) == ["seed", "lr", "model.arch", "valid_err", "dbdict.status"]
    human = ok(*args)
    assert "resnet" in human.stdout and "model.arch" in human.stdout


def test_default_columns_are_user_keys_status_and_path(sweep):
    tree, _ = sweep
    (row,) = jsonrows(tree, "seed=1")
    assert list(row) == ["lr", "model.arch", "model.depth", "seed", "valid_err", "dbdict.status", "dbdict.path"]


def test_clean_output_for_pipes_and_a_warning_for_people(sweep):
    tree, _ = sweep
    piped = ok(tree, "--format", "csv")
    assert piped.stderr == "" and "\x1b" not in piped.stdout
    human = ok(tree)
    assert "1 corrupt job" in human.stderr and "\x1b" not in human.stdout


def test_sql_reads_and_nothing_else(sweep):
    tree, jobs = sweep
    rows = jsonrows(tree, "--sql", 'SELECT "model.arch" AS arch, count(*) AS n FROM jobs '
                                  'WHERE "dbdict.status" = \'done\' GROUP BY 1 ORDER BY 1')
    assert rows == [{"arch": "mlp", "n": 1}, {"arch": "resnet", "n": 2}]
    assert jsonrows(tree, "--sql", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3) "
                                  "SELECT max(x) AS m FROM c") == [{"m": 3}]
    outside = os.path.join(os.path.dirname(tree), "attached.db")
    for hostile in ("DELETE FROM jobs", "DROP TABLE jobs", "UPDATE jobs SET lr = 1",
                    "INSERT INTO jobs (lr) VALUES (1)", f"ATTACH DATABASE '{outside}' AS x",
                    "PRAGMA writable_schema = 1", "PRAGMA journal_mode = wal",
                    "SELECT load_extension('x')", "SELECT 1; DROP TABLE jobs", "CREATE TABLE t (x)",
                    "SELECT * FROM nowhere", "VACUUM INTO '/tmp/x.db'"):
        proc = query(tree, "--sql", hostile)
        assert proc.returncode == 2, (hostile, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("Error: --sql") and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not os.path.exists(outside)
    assert len(jsonrows(tree)) == 6
    proc = query(tree, "seed=1", "--sql", "SELECT 1")
    assert proc.returncode == 2 and "cannot be combined" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (("--where", "lr = 1; drop table jobs"), "unexpected character ';'"),
    (("--where", "valid_er < 1"), "did you mean valid_err"),
    (("lrr=1",), "did you mean lr"),
    (("--sort", "-nope"), "unknown column 'nope'"),
    (("--columns", "seed,zzz"), "unknown column 'zzz'"),
    (("notafilter",), "expected key=value"),
])
def test_usage_errors_are_one_line_exit_2(sweep, args, message):
    tree, _ = sweep
    proc = query(tree, *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr


def test_missing_tree_is_a_usage_error(tmp_path):
    proc = query(str(tmp_path / "nope"))
    assert proc.returncode == 2 and "no such directory" in proc.stderr


def test_the_seed_name_and_the_cache(sweep):
    tree, jobs = sweep
    assert [r["seed"] for r in json.loads(ok(tree, "seed=0", "--format", "json", prog="dbdict-query").stdout)] == [0]
    # a state change shows at once, cache or not
    state = jd.read_latest_state(jobs["done0"])[1]
    state["valid_err"] = 0.05
    state["dbdict"]["epoch"] = 2
    with open(os.path.join(jobs["done0"], "claim.2"), "w") as f:
        json.dump(TOKEN, f)
    jd.write_state_file(jobs["done0"], 2, state)
    for extra in ((), ("--no-cache",)):
        assert jsonrows(tree, "seed=0", *extra)[0]["valid_err"] == 0.05


@pytest.mark.parametrize("text", ["3", "-3", "+3", "0", "0.5", "1.", "-2.5e-3", "1e-3", "010", "0x1f", "1_000",
                                  "true", "True", "yes", "off", "null", "~", "", "resnet", "res net", "a.b",
                                  "[1, 2]", "'quoted'", ".inf", "2026-01-01", "on_off", "nan"])
def test_filter_values_are_typed_exactly_like_yaml(text):
    from dbdict_fs.values import parse_scalar

    assert parse_value(text) == parse_scalar(text) and type(parse_value(text)) is type(parse_scalar(text))

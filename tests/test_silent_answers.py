"""Answers that were wrong without a word (issue 24): each test runs the real commands on a
real tree and failed before its fix."""

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import EXPERIMENTS, jobdirs, read_state, run_cli, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]


def exp(name):
    return f"{os.path.join(EXPERIMENTS, 'answer_exps.py')}:{name}"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DBDICT_CACHE_DIR", str(tmp_path / "cache"))


def query(tree, *args):
    proc = run_cli(tree, *args, "--format", "json", prog="dbdict-query")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def strict_json(text):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------- short names

def test_status_and_path_always_mean_the_jobs_own_fields(tree):
    made = run_cli("create", tree, "-e", exp("returns"), "value=null", "status=user-status",
                   "path=user-path", "x={1,2,3}")
    assert made.returncode == 0, made.stderr
    worked = run_cli("work", tree, "x=1")  # a work filter on a plain key
    assert worked.returncode == 0 and "1 done" in worked.stderr, worked.stderr
    for args in (["status=done"], ["--where", 'status == "done"'], ["--where", "status = 'done' and x = 1"]):
        rows = query(tree, *args)
        assert [r["x"] for r in rows] == [1], (args, rows)
        assert rows[0]["status"] == "user-status" and rows[0]["dbdict.status"] == "done"
    assert [r["x"] for r in query(tree, "status=ready", "--sort", "-x")] == [3, 2]
    # --columns and --sort: status and path are the job's; the user's key by its quoted name
    rows = query(tree, "x=1", "--columns", "status,path,`status`,`path`")
    assert len(rows) == 1 and os.path.isdir(rows[0].pop("dbdict.path")), rows
    assert rows == [{"dbdict.status": "done", "status": "user-status", "path": "user-path"}]
    assert len(query(tree, "`status`=user-status")) == 3
    assert len(query(tree, "--where", '`status` == "user-status" and status == "done"')) == 1
    # status, work, cancel and requeue select by the job's status too
    st = run_cli("status", tree, "status=ready", "--format", "json")
    assert st.returncode == 0 and json.loads(st.stdout)["counts"] == {"ready": 2}, st.stdout
    canceled = run_cli("cancel", tree, "status=ready", "x=2")
    assert canceled.returncode == 0 and "canceled 1 of 1" in canceled.stderr, canceled.stderr
    requeued = run_cli("requeue", tree, "--where", 'status == "canceled"')
    assert requeued.returncode == 0 and "requeued 1 of 1" in requeued.stderr, requeued.stderr
    worked = run_cli("work", tree, "status=ready")
    assert worked.returncode == 0 and "2 done" in worked.stderr, worked.stderr
    assert sorted(r["x"] for r in query(tree, "status=done")) == [1, 2, 3]


# ---------------------------------------------------------------- many keys

def test_every_key_stays_queryable_beyond_sqlites_column_limit(tree):
    made = run_cli("create", tree, "-e", exp("many_keys"), "n_keys=1000", "offset={0,1000,2000}")
    assert made.returncode == 0, made.stderr
    assert run_cli("work", tree).returncode == 0
    for cache in ([], ["--no-cache"], []):  # cold, then warm from the cache the first wrote
        rows = query(tree, "m_2999=999", *cache)
        assert [r["offset"] for r in rows] == [2000], rows
        assert rows[0]["m_2999"] == 999 and rows[0]["m_2000"] == 0 and rows[0].get("m_0") is None
        assert len(rows[0]) > 1000  # every key of the job comes out
        rows = query(tree, "--where", "m_2500 >= 500 or m_10 = 10", "--columns", "offset,m_10,m_2500",
                     "--sort", "-offset", *cache)
        assert rows == [{"offset": 2000, "m_10": None, "m_2500": 500}, {"offset": 0, "m_10": 10, "m_2500": None}]
    columns = run_cli(tree, "--columns", "*", "--format", "csv", "--limit", "1", prog="dbdict-query")
    header = next(csv.reader(io.StringIO(columns.stdout)))
    assert {f"m_{i}" for i in range(3000)} <= set(header)
    sql = run_cli(tree, "--sql", "select offset, value from jobs join jobs_extra on job = jobs.rowid "
                  "where key = 'm_2999'", "--format", "csv", prog="dbdict-query")
    assert sql.stdout.splitlines() == ["offset,value", "2000,999"], (sql.stdout, sql.stderr)
    st = run_cli("status", tree, "m_1500=500", "--format", "json")
    assert json.loads(st.stdout)["counts"] == {"done": 1}, st.stdout


# ---------------------------------------------------------------- types on the way out

def test_booleans_and_infinities_keep_their_type_in_json_and_csv(tree):
    made = run_cli("create", tree, "-e", exp("special_values"), "flag=true", "off=false")
    assert made.returncode == 0, made.stderr
    assert run_cli("work", tree).returncode == 0
    cols = "flag,off,good,bad,top,bottom"
    for fmt in ("json", "jsonl"):
        proc = run_cli(tree, "--columns", cols, "--format", fmt, prog="dbdict-query")
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout if fmt == "json" else "[" + proc.stdout.strip() + "]"
        assert strict_json(text) == [{"flag": True, "off": False, "good": True, "bad": False,
                                      "top": "Infinity", "bottom": "-Infinity"}], proc.stdout
    proc = run_cli(tree, "--columns", cols, "--format", "csv", prog="dbdict-query")
    assert proc.stdout.splitlines() == [cols, "true,false,true,false,inf,-inf"], proc.stdout
    assert len(query(tree, "flag=true", "--where", "good = true and top > 1e308")) == 1
    # a result key of any characters: backquoted in filters, --where, --columns and --sort
    rows = query(tree, "`acc/class 3`=0.95", "--where", "`acc/class 3` > 0.9", "--columns", "`acc/class 3`,flag",
                 "--sort", "-`acc/class 3`")
    assert rows == [{"acc/class 3": 0.95, "flag": True}], rows
    shown = run_cli("show", jobdirs(tree)[0], "--format", "json")
    assert strict_json(shown.stdout)["state"]["top"] == "Infinity", shown.stdout


# ---------------------------------------------------------------- return values

@pytest.mark.parametrize("value,shown", [("done", "'done'"), ("garbage", "'garbage'"), ("false", "False"),
                                         ("0", "0")])
def test_a_return_value_that_is_no_outcome_fails_the_job_naming_it(tree, value, shown):
    made = run_cli("create", tree, "-e", exp("returns"), f"value={value}")
    assert made.returncode == 0, made.stderr
    job = jobdirs(tree)[0]
    proc = run_cli("run", job)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    book = read_state(job)["dbdict"]
    assert book["status"] == "failed" and shown in book["error"], book
    assert shown in open(os.path.join(job, "stderr")).read()


# ---------------------------------------------------------------- SIGHUP

def test_sighup_stops_a_worker_like_sigterm(tree):
    made = run_cli("create", tree, "-e", exp("waits_for_stop"), "x=1")
    assert made.returncode == 0, made.stderr
    job = jobdirs(tree)[0]
    worker = subprocess.Popen(CLI + ["work", str(tree), "-q"], stderr=subprocess.PIPE, text=True)
    wait_for(lambda: os.path.exists(os.path.join(job, "workdir", "started")), what="the experiment's start")
    worker.send_signal(signal.SIGHUP)
    assert worker.wait(60) == 3, worker.stderr.read()
    book = read_state(job)["dbdict"]
    assert book["status"] == "ready" and book["priority"] == 2.0 and book["returned"] == "incomplete", book
    assert read_state(job)["stopped"] is True
    assert book["requeue_epoch"] == book["epoch"]  # a clean INCOMPLETE return: no attempt used up


# ---------------------------------------------------------------- requeue --fresh

def test_requeue_fresh_starts_in_an_empty_workdir_and_keeps_the_old_one(tree):
    made = run_cli("create", tree, "-e", exp("counts_in_workdir"), "x=1")
    assert made.returncode == 0, made.stderr
    job = jobdirs(tree)[0]
    assert run_cli("work", tree).returncode == 0
    assert read_state(job)["runs_seen"] == 1
    again = run_cli("requeue", tree, "--force")  # without --fresh: resumes in the same workdir
    assert again.returncode == 0, again.stderr
    assert run_cli("work", tree).returncode == 0
    assert read_state(job)["runs_seen"] == 2
    old = os.path.realpath(os.path.join(job, "workdir"))
    fresh = run_cli("requeue", tree, "--force", "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    kept = [line for line in fresh.stdout.splitlines() if "empty workdir" in line]
    assert len(kept) == 1 and job in kept[0], fresh.stdout
    assert run_cli("work", tree).returncode == 0
    state = read_state(job)
    assert state["dbdict"]["status"] == "done" and state["runs_seen"] == 1, state
    assert state["cwd_files"] == ["runs"]  # nothing of the old directory
    kept_dir = kept[0].split("the old one stays as ", 1)[1]
    assert os.path.isdir(kept_dir) and os.path.dirname(kept_dir) == job, kept[0]
    assert open(os.path.join(kept_dir, "runs")).read() == "2"
    assert os.path.realpath(os.path.join(job, "workdir")) not in (old, os.path.realpath(kept_dir))
    # the next plain requeue resumes in the new directory, the kept one stays
    assert run_cli("requeue", tree, "--force").returncode == 0 and run_cli("work", tree).returncode == 0
    assert read_state(job)["runs_seen"] == 2 and os.path.isdir(kept_dir)


# ---------------------------------------------------------------- damaged config

def test_requeue_refuses_a_job_whose_config_workers_would_refuse(tree):
    made = run_cli("create", tree, "-e", exp("returns"), "value=null", "x=1")
    assert made.returncode == 0, made.stderr
    job = jobdirs(tree)[0]
    assert run_cli("work", tree).returncode == 0
    config = os.path.join(job, "config.yaml")
    os.chmod(config, 0o644)
    with open(config, "w") as f:
        f.write("dbdict: [unclosed\n")
    proc = run_cli("requeue", tree, "--force")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "config.yaml" in errors[0] and "Traceback" not in proc.stderr, proc.stderr
    st = json.loads(run_cli("status", tree, "--format", "json").stdout)
    assert st["counts"] == {"done": 1}, st  # never `ready` while workers would skip it
    assert "skipping" not in run_cli("work", tree).stderr


# ---------------------------------------------------------------- make test

def test_make_test_installs_or_names_the_system_packages_its_tests_need(tmp_path):
    dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True)
    assert "tests/system-deps.sh" in dry.stdout, dry.stdout
    assert "tests/system-deps.sh" in open(os.path.join(ROOT, ".ci", "run")).read() or \
        "make test" in open(os.path.join(ROOT, ".ci", "run")).read()
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("bash", "grep", "id", "cat", "ldconfig"):
        found = shutil.which(tool) or shutil.which(tool, path="/sbin:/usr/sbin")
        if found:
            os.symlink(found, bare / tool)
    proc = subprocess.run(["bash", os.path.join(ROOT, "tests", "system-deps.sh")], capture_output=True,
                          text=True, env={"PATH": str(bare)})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(p in lines[0] for p in ("chromium", "fuse3", "strace", "faketime")), proc.stderr


# ---------------------------------------------------------------- README

def test_readme_says_what_a_new_user_asked():
    text = open(os.path.join(ROOT, "README.md")).read()
    assert "in-place edit" in text and "--no-cache" in text
    assert "[A-Za-z_][A-Za-z0-9_]*" in text  # which characters a key may hold
    assert "several trees" in text


def test_work_on_a_folder_holding_several_trees_walks_them_all(tmp_path):
    parent = tmp_path / "projects"
    for name in ("a", "b"):
        made = run_cli("create", parent / name, "-e", exp("returns"), "value=null", f"x={{1,2}}")
        assert made.returncode == 0, made.stderr
    proc = run_cli("work", parent)
    assert proc.returncode == 0 and "4 done" in proc.stderr, proc.stderr

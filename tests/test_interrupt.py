"""Ctrl-C (SIGINT) stops a long --sql query and a long create, with exit 130 and one line."""

import os
import signal
import subprocess
import sys

from conftest import experiment, jobdirs, run_cli, wait_for

from dbdict_fs import jobdir as jd


def start(args, cwd=None, env=None):
    code = "import sys; from dbdict_fs.cli import main; sys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=cwd,
                            env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_ctrl_c_stops_a_long_sql_query(tree, tmp_path):
    assert run_cli("create", tree, "-e", experiment("double"), "x=1").returncode == 0
    endless = "with recursive n(i) as (select 1 union all select i + 1 from n) select count(*) from n"
    proc = start(["query", tree, "--sql", endless], env={"DBDICT_CACHE_DIR": str(tmp_path / "c")})
    try:
        assert wait_for(lambda: cpu_seconds(proc.pid) > 1.0, timeout=60), "the query never ran"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip().splitlines() == ["Error: --sql: interrupted by Ctrl-C; no rows printed"], err


def test_ctrl_c_during_create_says_how_many_were_written(tree, tmp_path):
    (tmp_path / "gen.py").write_text("def many():\n    return [{'x': i} for i in range(20000)]\n")
    proc = start(["create", tree, "gen.py:many", "-e", experiment("double"), "-q"], cwd=tmp_path)
    try:
        assert wait_for(lambda: len(jobdirs(tree)) >= 20, timeout=120), "no job was written"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, (proc.returncode, err)
    written = jobdirs(tree)
    assert 20 <= len(written) < 20000
    assert sorted(out.splitlines()) == sorted(written)  # every job on disk was printed, and flushed
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"after writing {len(written)} of 20000 jobs" in lines[0], err
    assert not [n for n in os.listdir(tree) if n.startswith(".tmp")], "a half-built job was left"
    assert all(os.path.isfile(os.path.join(j, jd.CONFIG)) for j in written)

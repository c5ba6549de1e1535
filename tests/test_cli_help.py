"""Help and usage errors: each command speaks under its own name, errors have one prefix,
and a mistyped option or subcommand gets a did-you-mean and the right --help."""

import pytest

from conftest import run_cli


def one_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert not lines[0].startswith(("Error: dbdict", "Error: Error")), lines[0]
    return lines[0]


def test_run_job_help_shows_only_its_own_commands():
    out = run_cli("--help", prog="dbdict-run-job").stdout
    assert "dbdict-run-job run " in out and "dbdict-run-job work " in out
    assert "run-job create" not in out and "run-job query" not in out


def test_query_help_calls_itself_dbdict_query():
    out = run_cli("--help", prog="dbdict-query").stdout
    assert out.startswith("usage: dbdict-query TREE")
    assert "dbdict query tree" not in out and "  dbdict-query tree --sql" in out


def test_query_without_arguments_says_what_it_needs():
    line = one_error(run_cli(prog="dbdict-query"))
    assert "TREE" in line and "key=value," not in line and "dbdict-query --help" in line


@pytest.mark.parametrize("prog, args, suggestion, help_of", [
    ("dbdict", ["crate", "t"], "did you mean create?", "dbdict --help"),
    ("dbdict", ["requeue", "t", "--forse"], "did you mean --force?", "dbdict requeue --help"),
    ("dbdict", ["status", "t", "--wacth"], "did you mean --watch?", "dbdict status --help"),
    ("dbdict-query", ["t", "--colums", "x"], "did you mean --columns?", "dbdict-query --help"),
    ("dbdict-run-job", ["wrk", "t"], "did you mean work?", "dbdict-run-job --help"),
])
def test_mistakes_get_a_did_you_mean_and_the_right_help(tmp_path, prog, args, suggestion, help_of):
    line = one_error(run_cli(*args, prog=prog, cwd=tmp_path))
    assert suggestion in line and f"(see {help_of})" in line, line

"""`dbdict submit` passes every worker option through to the workers' command line
(a --dry-run: no SLURM needed)."""

import shlex

from conftest import experiment, run_cli

from dbdict_fs.options import WORKER_OPTIONS as DECLARED

WORKER_OPTIONS = {"--save-every": "30", "--max-runtime": "3600", "--finish-up-after": "3000",
                  "--scratch": "/tmp/node scratch", "--max-resumes": "5", "--grace": "20",
                  "--lease": "300", "--heartbeat": "20", "--max-attempts": "4", "--preload": "numpy,torch"}
FLAGS = {"--fresh-interpreter"}  # passed on as the bare flag


def _worker_words(proc):
    line = next(line for line in proc.stdout.splitlines() if "-m dbdict_fs.cli work" in line)
    return shlex.split(line.replace('"$PYTHON"', "python").replace('"$TREE"', "TREE").rstrip(" &"))


def test_every_worker_option_reaches_the_worker_command(tree):
    # every attempt option of `dbdict work` except the two that make no sense in a batch task
    assert {o.flag for o in DECLARED} - {"--restart-priority", "--quiet"} == set(WORKER_OPTIONS) | FLAGS
    assert {o.flag for o in DECLARED if o.submit} == set(WORKER_OPTIONS) | FLAGS
    assert run_cli("create", tree, "-e", experiment("double"), "x=1").returncode == 0
    args = [a for kv in WORKER_OPTIONS.items() for a in kv]
    proc = run_cli("submit", tree, "--slurm", "--workers", "2", "--dry-run", *args)
    assert proc.returncode == 0, proc.stderr
    words = _worker_words(proc)
    given = dict(zip(words[5::2], words[6::2]))
    assert given == WORKER_OPTIONS
    flagged = [a for kv in WORKER_OPTIONS.items() if kv[0] != "--preload" for a in kv] + sorted(FLAGS)
    proc = run_cli("submit", tree, "--slurm", "--workers", "2", "--dry-run", *flagged)
    assert proc.returncode == 0, proc.stderr
    words = _worker_words(proc)
    assert FLAGS <= set(words) and "--preload" not in words, words
    both = run_cli("submit", tree, "--slurm", "--workers", "2", "--dry-run", *args, *sorted(FLAGS))
    assert both.returncode == 2 and "choose one" in both.stderr and len(both.stderr.strip().splitlines()) == 1


def test_slurm_module_does_not_import_the_cli_and_reports_like_it(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from dbdict_fs import slurm; rc = slurm.main(sys.argv[1:]); "
            "assert 'dbdict_fs.cli' not in sys.modules, 'slurm imports cli'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "ready", str(tmp_path / "no")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("Error: ") \
        and "no such file" in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    typo = subprocess.run([sys.executable, "-m", "dbdict_fs.slurm", "redy", "x"], capture_output=True,
                          text=True, timeout=60)
    assert typo.returncode == 2 and "did you mean ready?" in typo.stderr, typo.stderr
    debug = subprocess.run([sys.executable, "-m", "dbdict_fs.slurm", "--debug", "ready", str(tmp_path / "no")],
                           capture_output=True, text=True, timeout=60)
    assert "Traceback" in debug.stderr and "UsageError" in debug.stderr

"""`dbdict submit` passes every worker option through to the workers' command line
(a --dry-run: no SLURM needed)."""

import shlex

from conftest import experiment, run_cli

from dbdict_fs.cli import RUN_OPTIONS

WORKER_OPTIONS = {"--save-every": "30", "--max-runtime": "3600", "--finish-up-after": "3000",
                  "--scratch": "/tmp/node scratch", "--max-resumes": "5", "--grace": "20",
                  "--lease": "300", "--heartbeat": "20", "--max-attempts": "4"}


def test_every_worker_option_reaches_the_worker_command(tree):
    # every attempt option of `dbdict work` except the two that make no sense in a batch task
    assert {"--" + o.replace("_", "-") for o in RUN_OPTIONS} - {"--restart-priority", "--quiet"} \
        == set(WORKER_OPTIONS)
    assert run_cli("create", tree, "-e", experiment("double"), "x=1").returncode == 0
    args = [a for kv in WORKER_OPTIONS.items() for a in kv]
    proc = run_cli("submit", tree, "--slurm", "--workers", "2", "--dry-run", *args)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if "-m dbdict_fs.cli work" in line)
    words = shlex.split(line.replace('"$PYTHON"', "python").replace('"$TREE"', "TREE").rstrip(" &"))
    given = dict(zip(words[5::2], words[6::2]))
    assert given == WORKER_OPTIONS

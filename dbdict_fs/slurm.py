"""Run a tree on a SLURM cluster: `dbdict submit TREE --slurm --workers N` (issue 8).

`submit()` writes a readable sbatch script under TREE/.dbdict/slurm/ and submits it with
`sbatch --parsable`:

* worker mode (default): an array of N tasks, each running `dbdict work TREE` with the
  submitter's Python (`sys.executable -m dbdict_fs.cli`, so no PATH is needed);
* `--per-job`: one array task per runnable job, each running `dbdict run JOBDIR`, the job
  read from a list file next to the script (line SLURM_ARRAY_TASK_ID + 1).

Time limits and preemption: the script asks SLURM for `--signal=B:USR2@<signal_grace>`
(USR1 is left alone: ML stacks use it). `B:` signals only the batch shell, so the script
runs the worker in the background and forwards the first USR2/TERM/INT it gets as USR2;
the worker turns it into channel() 'stop', the job is requeued in the tree and the worker
exits 3. With resubmit (the default) a task whose worker stopped like that, while runnable
jobs remain, puts itself back in the SLURM queue: `scontrol requeue ARRAYJOB_TASK` (the
script is submitted with --requeue), or when that is refused a fresh `sbatch` of the same
script for that one task. `python -m dbdict_fs.slurm ready PATH` is the script's check.

What squeue says of running jobs is `scheduler`'s; this module only writes and submits scripts.
"""

import os
import re
import sys
import time as _time

# secrets, shlex, shutil and subprocess are imported where used: cli.py builds the `submit`
# parser for every command, and they cost ~20 ms of start-up.

from . import jobdir as jd
from . import options
from .argtypes import RawDescriptionHelpFormatter, nonneg_int, positive_int
from .errors import DbdictError, UsageError
from .scheduler import jobs_gone, tasks_running

DEFAULT_SIGNAL_GRACE = 180  # s before the time limit; SLURM may send it up to ~60 s late
DEFAULT_MAX_RESUBMITS = 100  # per array task: a job that never progresses cannot loop forever


class SubmitError(DbdictError):
    """sbatch is missing or refused the script (exit 2, one line)."""


# ---------------------------------------------------------------- time limits

_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time_limit(text):
    """Seconds of a SLURM --time value, None for UNLIMITED/INFINITE; UsageError if malformed.

    Formats (sbatch(1)): M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
    """
    text = str(text).strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = _TIME_RE.match(text)
    if not m:
        raise UsageError(f"--time {text!r}: expected minutes, M:S, H:M:S, D-H, D-H:M or D-H:M:S")
    days, a, b, c = m.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, s = int(a), int(b or 0), int(c or 0)
        return int(days) * 86400 + h * 3600 + mi * 60 + s
    if c is not None:  # H:M:S
        return int(a) * 3600 + int(b) * 60 + int(c)
    if b is not None:  # M:S
        return int(a) * 60 + int(b)
    return int(a) * 60  # M


# ---------------------------------------------------------------- the script

def _sbatch_value(value, what):
    """A value for an #SBATCH line, double-quoted (sbatch splits those lines on blanks)."""
    value = str(value)
    if any(ch in value for ch in '"\\\n\r'):
        raise UsageError(f"{what} {value!r}: a double quote, backslash or newline cannot be "
                         f"written in an #SBATCH line")
    return f'"{value}"'


def _slurm_pattern(path):
    """A literal path inside a SLURM filename pattern: % is written %%."""
    return path.replace("%", "%%")


def _q(value):
    import shlex

    return shlex.quote(str(value))


def _package_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stamp():
    return _time.strftime("%Y%m%dT%H%M%SZ", _time.gmtime())


class Plan:
    """What `submit` writes and runs: the script (text and path), the job list, sbatch's argv."""

    def __init__(self, tree, script_path, script, joblist_path=None, joblist=None, array=None):
        self.tree, self.script_path, self.script = tree, script_path, script
        self.joblist_path, self.joblist, self.array = joblist_path, joblist, array

    @property
    def slurm_dir(self):
        return os.path.dirname(self.script_path)

    @property
    def logs_dir(self):
        return os.path.join(self.slurm_dir, "logs")


def ready_jobs(path):
    """Job directories under `path` (a tree or one job) that a worker could book now.

    Ready as booking defines it (`booking.plain_ready`): the latest state says ready and no
    claim is newer than it (not booked).
    """
    from .booking import plain_ready

    out = []
    for job in jd.iter_jobdirs(path):
        try:
            listing, state = jd.read_latest_state(job)
            if plain_ready(listing, state):
                out.append(job)
        except (DbdictError, OSError, KeyError, TypeError):
            continue
    return out


def prepare(tree, workers=None, *, time=None, partition=None, cpus_per_task=None, mem=None, gres=None,
            signal_grace=DEFAULT_SIGNAL_GRACE, resubmit=True, max_resubmits=DEFAULT_MAX_RESUBMITS,
            per_job=False, job_name=None, wait=False, sbatch_args=(), python=None, gpus_per_worker=None,
            **worker_options):
    """Check the options and build the Plan (nothing is written: see `submit`).
    `worker_options`: any of options.WORKER_OPTIONS, passed to each worker."""
    from . import trees

    tree = trees.resolve(tree)  # the script's workers walk this path: never a link to it
    if not os.path.isdir(tree):
        raise UsageError(f"{tree}: no such directory")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UsageError(f"--workers must be a whole number >= 1, not {workers!r}")
    if workers is None and not per_job:
        raise UsageError("submit: --workers N is required (or --per-job)")
    if gpus_per_worker is not None and (per_job or isinstance(gpus_per_worker, bool)
                                        or not isinstance(gpus_per_worker, int) or gpus_per_worker < 1):
        raise UsageError("--gpus-per-worker K (a whole number >= 1) goes with --workers N, not --per-job"
                         if per_job else f"--gpus-per-worker must be a whole number >= 1, not {gpus_per_worker!r}")
    if isinstance(signal_grace, bool) or not isinstance(signal_grace, int) or not 1 <= signal_grace <= 65535:
        raise UsageError(f"--signal-grace must be a whole number of seconds in 1..65535, not {signal_grace!r}")
    if time is not None:
        limit = parse_time_limit(time)
        if limit is not None and signal_grace >= limit:
            raise UsageError(f"--signal-grace {signal_grace} is not shorter than --time {time} ({limit} s): "
                             f"the warning would come before the job starts")
    unknown = sorted(set(worker_options) - {o.name for o in options.WORKER_OPTIONS if o.submit})
    if unknown:
        raise UsageError(f"submit: unknown worker option {unknown[0]!r}")
    if worker_options.get("grace") is None:
        # time to checkpoint after 'stop', within the warning
        worker_options["grace"] = float(max(1, min(60, signal_grace // 3)))
    if max_resubmits is not None and (isinstance(max_resubmits, bool) or not isinstance(max_resubmits, int)
                                      or max_resubmits < 0):
        raise UsageError(f"--max-resubmits must be a whole number >= 0, not {max_resubmits!r}")
    python = os.path.abspath(python or sys.executable)
    import secrets

    slurm_dir = os.path.join(tree, jd.SLURM_DIR)
    base = f"{'run' if per_job else 'work'}-{_stamp()}-{secrets.token_hex(2)}"
    script_path = os.path.join(slurm_dir, base + ".sh")
    logs = os.path.join(slurm_dir, "logs")
    joblist_path = joblist = None
    if per_job:
        joblist = sorted(os.path.abspath(j) for j in ready_jobs(tree))
        if not joblist:
            raise UsageError(f"{tree}: no runnable job to submit (--per-job submits one task per ready job)")
        bad = [j for j in joblist if "\n" in j or "\r" in j]
        if bad:
            raise UsageError(f"{bad[0]!r}: a job path with a newline cannot go in the job list")
        joblist_path = os.path.join(slurm_dir, base + ".jobs")
        array = f"0-{len(joblist) - 1}" + (f"%{workers}" if workers else "")
    else:
        array = f"0-{workers - 1}"

    name = job_name or f"dbdict-{os.path.basename(tree) or 'tree'}"
    directives = [
        ("--job-name", name),
        ("--array", array),
        ("--output", _slurm_pattern(logs) + "/%A_%a.out"),
        ("--open-mode", "append"),
        ("--signal", f"B:USR2@{signal_grace}"),
    ]
    if resubmit:
        directives.append(("--requeue", None))
    for opt, value in (("--time", time), ("--partition", partition), ("--cpus-per-task", cpus_per_task),
                       ("--mem", mem), ("--gres", gres)):
        if value is not None:
            directives.append((opt, value))
    lines = [f"#SBATCH {opt}" if value is None else f"#SBATCH {opt}={_sbatch_value(value, opt)}"
             for opt, value in directives]
    if sbatch_args:
        lines.append("#SBATCH " + " ".join(_sbatch_value(a, "sbatch argument") for a in sbatch_args))

    words = options.command_line(worker_options)
    if per_job:
        command = ["run", '"$JOB"'] + [_q(o) for o in words]
        what = f"one task per runnable job ({len(joblist)} jobs" + (f", at most {workers} at once)" if workers else ")")
    else:
        command = ["work", '"$TREE"'] + [_q(o) for o in words] + (["--wait"] if wait else [])
        what = f"{workers} worker{'s' if workers > 1 else ''}"
        if gpus_per_worker is not None:  # each task runs a pool over the GPUs of its allocation
            command += ["--gpus", "all", "--gpus-per-worker", str(gpus_per_worker)]
            what = f"{workers} task{'s' if workers > 1 else ''}, each a pool of one worker per {gpus_per_worker} GPUs"
    script = _SCRIPT.format(
        what=what, tree_comment=tree.replace("\n", " "), when=_time.strftime("%Y-%m-%d %H:%M:%S UTC", _time.gmtime()),
        script_q=_q(script_path), directives="\n".join(lines), tree=_q(tree), script=_q(script_path),
        python=_q(python), pythonpath=_q(_package_root()), resubmit=1 if resubmit else 0,
        max_resubmits=max_resubmits if max_resubmits is not None else -1,
        pick_job=_PICK_JOB.format(joblist=_q(joblist_path)) if per_job else "",
        check='"$JOB"' if per_job else '"$TREE"',
        command=" ".join(command), signal_grace=signal_grace)
    return Plan(tree, script_path, script, joblist_path, joblist, array)


_PICK_JOB = """\
JOBLIST={joblist}
mapfile -t JOBS < "$JOBLIST"
JOB=${{JOBS[${{SLURM_ARRAY_TASK_ID:-0}}]:-}}
if [ -z "$JOB" ]; then log "no line $((${{SLURM_ARRAY_TASK_ID:-0}} + 1)) in $JOBLIST"; exit 2; fi
log "job $JOB"
"""

_SCRIPT = """\
#!/bin/bash
# dbdict_fs on SLURM: {what} for the tree
#   {tree_comment}
# written by `dbdict submit` at {when}. To submit it again by hand:
#   sbatch {script_q}
# SLURM sends USR2 to this shell {signal_grace} s before the time limit (B:USR2@...); the shell
# forwards it to the worker, whose experiment is asked to stop (channel() answers 'stop'), and
# the job goes back to 'ready' in the tree. Then, if runnable jobs remain, this task requeues
# itself (scontrol requeue) or is submitted again (sbatch), until the tree is drained.
{directives}

set -u
TREE={tree}
SCRIPT={script}
EVENTS="${{SCRIPT%.sh}}.events"   # worker deaths and restarts, read by `dbdict status`
PYTHON={python}
export PYTHONPATH={pythonpath}"${{PYTHONPATH:+:$PYTHONPATH}}"
RESUBMIT={resubmit}         # 0: --no-resubmit
MAX_RESUBMITS={max_resubmits}   # per task, counting requeues and fresh submissions (-1: no limit)
TASK=${{SLURM_ARRAY_JOB_ID:-${{SLURM_JOB_ID:-}}}}${{SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}}
RESUBMITS=$(( ${{SLURM_RESTART_COUNT:-0}} + ${{DBDICT_SLURM_RESUBMITS:-0}} ))

log() {{ echo "[dbdict-slurm $(date -u +%Y-%m-%dT%H:%M:%SZ)] $*"; }}
log "task $TASK on $(hostname), resubmitted $RESUBMITS times"
{pick_job}
# Forward the first stop request (USR2 from SLURM, or TERM/INT) to the worker as USR2.
SIGNALED=
INTR=0
forward() {{
  INTR=1
  log "got SIG$1"
  if [ -z "$SIGNALED" ]; then
    SIGNALED=$1
    [ -n "${{WORKER_PID:-}}" ] && kill -USR2 "$WORKER_PID" 2>/dev/null && log "asked the worker to stop"
  fi
}}
trap 'forward USR2' USR2
trap 'forward TERM' TERM
trap 'forward INT' INT

# A worker that dies abnormally (kill -9, the OOM killer) while this task was not asked to
# stop is replaced at once in this allocation: the new worker, on the same host, sees the
# old one's pid and processes gone and takes its job over without waiting for the lease.
RESTARTS=0
MAX_RESTARTS=3
while :; do
  "$PYTHON" -m dbdict_fs.cli {command} &
  WORKER_PID=$!
  [ -n "$SIGNALED" ] && kill -USR2 "$WORKER_PID" 2>/dev/null
  # `wait` returns early (> 128) when a trapped signal arrives: wait again for the real status.
  rc=
  while :; do
    INTR=0
    wait "$WORKER_PID"; r=$?
    if [ "$r" = 127 ] && [ -n "$rc" ]; then break; fi
    rc=$r
    if [ "$INTR" = 1 ] && [ "$r" -gt 128 ]; then continue; fi
    break
  done
  log "worker exited with code $rc"
  if [ "$rc" -gt 128 ] && [ -z "$SIGNALED" ]; then
    # one line per abnormal death, for `dbdict status` (EVENTS: see `submission_health`)
    if [ "$RESTARTS" -lt "$MAX_RESTARTS" ]; then
      RESTARTS=$((RESTARTS + 1))
      echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $TASK died signal $((rc - 128)) restarted $RESTARTS" >> "$EVENTS"
      log "the worker died of signal $((rc - 128)): starting a new one ($RESTARTS of $MAX_RESTARTS)"
      continue
    fi
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $TASK died signal $((rc - 128)) not-restarted $RESTARTS" >> "$EVENTS"
    log "the worker died of signal $((rc - 128)) after $RESTARTS restarts: not starting another"
  fi
  break
done

# 3: the worker was stopped by a signal (or, for one job, it returned INCOMPLETE): its job is
# ready again in the tree. Come back for it while runnable jobs remain -- after USR2 (the
# time-limit warning, or `scancel --signal=USR2 --batch`), not after TERM (`scancel` means
# stop; SLURM requeues a task preempted in REQUEUE mode by itself).
if [ "$rc" = 3 ]; then
  if [ "$RESUBMIT" != 1 ]; then
    log "not resubmitting (--no-resubmit)"
  elif [ -n "$SIGNALED" ] && [ "$SIGNALED" != USR2 ]; then
    log "not resubmitting: stopped by SIG$SIGNALED (scancel, or the time limit itself); a preempted task is requeued by SLURM"
  elif [ "$MAX_RESUBMITS" -ge 0 ] && [ "$RESUBMITS" -ge "$MAX_RESUBMITS" ]; then
    log "not resubmitting: already resubmitted $RESUBMITS times (--max-resubmits $MAX_RESUBMITS)"
  elif ! LEFT=$("$PYTHON" -m dbdict_fs.slurm ready {check}); then
    log "not resubmitting: could not count the runnable jobs"
  elif [ "$LEFT" = 0 ]; then
    log "no runnable job left: not resubmitting"
  else
    log "$LEFT runnable job(s) left: resubmitting"
    if [ -n "${{SLURM_ARRAY_TASK_ID:-}}" ] && scontrol requeue "$TASK"; then
      log "requeued $TASK"
      exit 0
    fi
    if [ -z "${{SLURM_ARRAY_TASK_ID:-}}" ] && scontrol requeue "$SLURM_JOB_ID"; then
      log "requeued $SLURM_JOB_ID"
      exit 0
    fi
    log "scontrol requeue refused: submitting task ${{SLURM_ARRAY_TASK_ID:-0}} again"
    if NEW=$(sbatch --parsable --array="${{SLURM_ARRAY_TASK_ID:-0}}" \\
             --export=ALL,DBDICT_SLURM_RESUBMITS=$((RESUBMITS + 1)) "$SCRIPT"); then
      log "submitted ${{NEW%%;*}}"
    else
      log "sbatch failed: the tree's remaining jobs wait for a new \\`dbdict submit\\`"
    fi
  fi
fi
exit "$rc"
"""


# ---------------------------------------------------------------- submitting

def _find_sbatch(sbatch):
    import shutil

    path = shutil.which(sbatch)
    if path is None:
        raise SubmitError(f"{sbatch} not found on PATH: run `dbdict submit --slurm` on a SLURM login node "
                          f"(or --dry-run to see the script)")
    return path


def _parse_job_id(out):
    """`sbatch --parsable` prints `jobid` or `jobid;cluster`."""
    line = out.strip().splitlines()[-1] if out.strip() else ""
    job_id = line.split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise SubmitError(f"sbatch printed no job id (got {out.strip()[:200]!r})")
    return job_id


def _write(path, text, mode=0o644):
    tmp = os.path.join(os.path.dirname(path), f"{jd.TMP_PREFIX}{os.path.basename(path)}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _makedirs(path):
    """mkdir -p that returns the directories it created (deepest last), to undo on failure."""
    made = []
    path = os.path.abspath(path)
    while not os.path.isdir(path):
        made.append(path)
        path = os.path.dirname(path)
    for d in reversed(made):
        os.mkdir(d)
    return list(reversed(made))


def submit_plan(plan, sbatch="sbatch", timeout=120):
    """Write the plan's files, run sbatch, and return the SLURM job id.

    On any failure every file and directory this call created is removed again, so a failed
    submission leaves nothing half-written in TREE/.dbdict/.
    """
    import subprocess

    sbatch_path = _find_sbatch(sbatch)
    created_dirs, created_files = [], []
    try:
        created_dirs = _makedirs(plan.logs_dir)  # SLURM does not create the --output directory
        if plan.joblist_path:  # read when a task starts, which may be at once: in place first
            _write(plan.joblist_path, "".join(j + "\n" for j in plan.joblist))
            created_files.append(plan.joblist_path)
        _write(plan.script_path, plan.script, 0o755)
        created_files.append(plan.script_path)
        try:
            proc = subprocess.run([sbatch_path, "--parsable", plan.script_path], capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SubmitError(f"sbatch did not answer within {timeout} s") from None
        except OSError as exc:
            raise SubmitError(f"cannot run {sbatch_path}: {exc.strerror or exc}") from None
        if proc.returncode != 0:
            msg = " ".join(proc.stderr.split()) or f"exit code {proc.returncode}"
            raise SubmitError(f"sbatch failed: {msg}")
        job_id = _parse_job_id(proc.stdout)
    except BaseException:
        for path in created_files:
            try:
                os.unlink(path)
            except OSError:
                pass
        for d in reversed(created_dirs):
            try:
                os.rmdir(d)
            except OSError:
                pass
        raise
    try:  # the record `dbdict status` reads (a submission it cannot name is just not shown)
        _write(_record_path(plan.script_path), job_id + "\n")
    except OSError:
        pass
    return job_id


def _record_path(script_path):
    return script_path[:-3] + ".jobid" if script_path.endswith(".sh") else script_path + ".jobid"


def submission_health(tree, squeue="squeue", timeout=15):
    """Per submission recorded under TREE/.dbdict/slurm/ (`<script>.jobid`): its SLURM job id,
    script, how many worker tasks died abnormally (a signal they were not sent: kill -9, the
    OOM killer), how many of those deaths were replaced by a new worker and how many were
    not (3 per task at most), and how many of its tasks still run (one squeue call for all;
    None when squeue cannot tell). [] when the tree has no submission: no squeue call."""
    import glob

    records = []
    for path in sorted(glob.glob(os.path.join(glob.escape(os.path.join(tree, jd.SLURM_DIR)), "*.jobid"))):
        try:
            with open(path, encoding="utf-8") as f:
                job = f.read().strip()
        except OSError:
            continue
        if not job.isdigit():
            continue
        deaths = restarted = 0
        try:
            with open(path[:-len(".jobid")] + ".events", encoding="utf-8", errors="replace") as f:
                for line in f:
                    words = line.split()
                    if len(words) >= 6 and words[2] == "died":
                        deaths += 1
                        restarted += words[5] == "restarted"
        except OSError:
            pass
        records.append({"job": job, "script": path[:-len(".jobid")] + ".sh", "died": deaths,
                        "restarted": restarted, "not_restarted": deaths - restarted, "running": None})
    if not records:
        return []
    running = tasks_running([r["job"] for r in records], squeue, timeout)
    for r in records:
        r["running"] = running.get(r["job"]) if running is not None else None
    return records


def submit(tree, workers=None, *, sbatch="sbatch", **options):
    """Submit workers (or, with per_job=True, one task per ready job) for `tree` to SLURM.

    Options: time, partition, cpus_per_task, mem, gres, signal_grace (s, default 180),
    resubmit (default True), max_resubmits, per_job, job_name, wait, sbatch_args (a list of
    extra sbatch arguments), python, and the worker options (options.WORKER_OPTIONS).
    Returns the SLURM job id (a string). The script is at `prepare(...).script_path`.
    """
    return submit_plan(prepare(tree, workers, **options), sbatch=sbatch)


# ---------------------------------------------------------------- command line

HELP = """\
Submit workers for TREE to SLURM as one job array, and print the sbatch script's path, then
the SLURM job id alone on the last line. The script, its job list (--per-job) and the worker
logs (logs/%A_%a.out) go under TREE/.dbdict/slurm/. Arguments after `--` go to sbatch.

Before the time limit (--signal-grace S, default 180) SLURM sends USR2 to the script, which
asks the worker to stop: the experiment's channel() answers 'stop', it checkpoints and
returns INCOMPLETE, and its job is ready again in the tree. Unless --no-resubmit, the task
then requeues itself (or is submitted again) while runnable jobs remain. Preemption and
`scancel --signal=USR2 --batch JOBID_TASK` work the same way.

examples:
  dbdict submit tree --slurm --workers 8 --time 4:00:00 --partition gpu --gres gpu:1
  dbdict submit tree --slurm --workers 2 --gres gpu:4 --gpus-per-worker 1  # 4 workers a task
  dbdict submit tree --slurm --workers 8 --dry-run            # print the script only
  dbdict submit tree --slurm --per-job --workers 20 -- --qos=low --account=lab
"""


def add_arguments(p):
    """The options of `dbdict submit` (the lead's cli.py adds the subparser and calls `run`)."""
    p.usage = "%(prog)s TREE --slurm (--workers N | --per-job) [options] [-- SBATCH_ARGS...]"
    p.add_argument("tree", metavar="TREE")
    p.add_argument("--slurm", action="store_true", help="submit to SLURM with sbatch (the only backend so far)")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="array tasks, each a `dbdict work TREE` worker (with --per-job: at most N at once)")
    p.add_argument("--time", metavar="T", help="time limit per task, as sbatch --time (e.g. 4:00:00, 1-0)")
    p.add_argument("--partition", metavar="P", help="the SLURM partition, as sbatch --partition")
    p.add_argument("--cpus-per-task", type=positive_int, metavar="C", help="CPUs per task, as sbatch --cpus-per-task")
    p.add_argument("--mem", metavar="M", help="memory per node, as sbatch --mem (e.g. 16G)")
    p.add_argument("--gres", metavar="G", help="generic resources, as sbatch --gres (e.g. gpu:1)")
    p.add_argument("--job-name", metavar="NAME", help="SLURM job name (default dbdict-<tree name>)")
    p.add_argument("--signal-grace", type=positive_int, default=DEFAULT_SIGNAL_GRACE, metavar="S",
                   help=f"SLURM sends USR2 S seconds before the time limit (default {DEFAULT_SIGNAL_GRACE}; "
                        f"it can come ~60 s late or ~30 s early: choose checkpoint time + 60)")
    p.add_argument("--no-resubmit", dest="resubmit", action="store_false",
                   help="a task stopped by a signal does not requeue itself")
    p.add_argument("--max-resubmits", type=nonneg_int, default=DEFAULT_MAX_RESUBMITS, metavar="N",
                   help=f"times each task may requeue itself (default {DEFAULT_MAX_RESUBMITS})")
    p.add_argument("--per-job", action="store_true",
                   help="one array task per runnable job (`dbdict run JOBDIR`) instead of N workers")
    p.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")
    g = p.add_argument_group("worker options (passed to `dbdict work`/`dbdict run` in each task)")
    options.add_arguments(g, submit=True, defaults={
        "grace": "after 'stop', seconds before the experiment is killed "
                 "(default: a third of --signal-grace, at most 60)",
        "scratch": "run in a node-local copy of workdir under DIR, on each node (checked there)"})
    g.add_argument("--wait", action="store_true", help="workers keep polling while jobs run elsewhere")
    g.add_argument("--gpus-per-worker", type=positive_int, metavar="K",
                   help="each task runs a pool (dbdict work --gpus all --gpus-per-worker K): one worker "
                        "per K GPUs of its allocation (CUDA_VISIBLE_DEVICES, e.g. from --gres gpu:N)")
    p.set_defaults(sbatch_args=[])
    _split_at_double_dash(p)


def _split_at_double_dash(p):
    """`-- ARGS...` go to sbatch verbatim: take them off before argparse sees them (a
    positional nargs='*' cannot catch option-like words reliably after other options)."""
    original = p.parse_known_args

    def parse_known_args(args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        extra = []
        if "--" in args:
            i = args.index("--")
            args, extra = args[:i], args[i + 1:]
        ns, rest = original(args, namespace)
        ns.sbatch_args = list(getattr(ns, "sbatch_args", None) or []) + extra
        return ns, rest

    p.parse_known_args = parse_known_args


def _options(args):
    return dict(time=args.time, partition=args.partition, cpus_per_task=args.cpus_per_task, mem=args.mem,
                gres=args.gres, signal_grace=args.signal_grace, resubmit=args.resubmit,
                max_resubmits=args.max_resubmits, per_job=args.per_job, job_name=args.job_name,
                wait=args.wait, sbatch_args=args.sbatch_args, gpus_per_worker=args.gpus_per_worker,
                **options.given(args))


def run(args):
    """`dbdict submit TREE --slurm ...`: returns the exit code."""
    if not args.slurm:
        raise UsageError("submit: say where to submit: --slurm (the only scheduler supported so far)")
    plan = prepare(args.tree, args.workers, **_options(args))
    if args.dry_run:
        sys.stdout.write(plan.script)
        sys.stdout.flush()
        extra = f" and {plan.joblist_path} ({len(plan.joblist)} jobs)" if plan.joblist else ""
        print(f"dry run: would write {plan.script_path}{extra} and submit it with sbatch; nothing written",
              file=sys.stderr)
        return 0
    job_id = submit_plan(plan)
    print(plan.script_path)
    what = f"{len(plan.joblist)} jobs, one task each" if plan.joblist else f"{args.workers} workers"
    print(f"submitted {what} as SLURM job {job_id}; logs in {plan.logs_dir}", file=sys.stderr)
    print(job_id)
    sys.stdout.flush()
    return 0


def main(argv=None):
    """`python -m dbdict_fs.slurm submit TREE --slurm ...` (= `dbdict submit`), and the
    script's helpers: `ready PATH` (prints how many jobs under PATH are ready) and
    `gone CLUSTER_JOB...` (prints `ID gone|alive|unknown` per id)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from .argtypes import Parser
    from .command import run_command

    parser = Parser(prog="python -m dbdict_fs.slurm")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    p = sub.add_parser("submit", help="= dbdict submit", formatter_class=RawDescriptionHelpFormatter,
                       description=HELP)
    add_arguments(p)
    p = sub.add_parser("ready", help="print how many jobs under PATH are ready (exit 0)")
    p.add_argument("path", metavar="PATH")
    p = sub.add_parser("gone", help="is each SLURM job gone? (squeue)")
    p.add_argument("ids", nargs="+", metavar="CLUSTER_JOB")

    def parse():
        args = parser.parse_args(argv)
        args.func = command
        return args

    def command(args):
        if args.command == "submit":
            return run(args)
        if args.command == "ready":
            if not os.path.exists(args.path):
                raise UsageError(f"{args.path}: no such file or directory")
            print(len(ready_jobs(args.path)))
            return 0
        for job, gone in jobs_gone(args.ids).items():
            print(f"{job} {'unknown' if gone is None else 'gone' if gone else 'alive'}")
        return 0

    return run_command(parse, argv)


if __name__ == "__main__":
    sys.exit(main())

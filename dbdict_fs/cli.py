"""The `dbdict` command and its seed-named twins `dbdict-run-job` and `dbdict-query`.

Commands are thin: parse, call one library function, print. Every DbdictError becomes one
line on stderr and its exit code (DESIGN.md 7); `--debug` (or DBDICT_DEBUG=1) shows the
traceback instead. Heavy modules are imported inside the commands that need them.
"""

import os
import sys

from . import options
from .argtypes import Parser, RawDescriptionHelpFormatter
from .argtypes import finite as _number
from .argtypes import positive_int as _positive_int
from .argtypes import seconds as _seconds
from .command import run_command
from .errors import ExitCode, UsageError


def _help(text):
    return {"formatter_class": RawDescriptionHelpFormatter, "description": text.strip()}


def _add_run_options(p):
    options.add_arguments(p.add_argument_group("attempt options (run, work, cmdline)"))


def _add_config_printing(p):
    p.add_argument("--print-defaults", action="store_true",
                   help="print the defaults a class experiment declares, create nothing")
    p.add_argument("--print-config", action="store_true",
                   help="print each full config (defaults filled in), create nothing")
    p.add_argument("--no-check-keys", action="store_true",
                   help="do not reject keys a class experiment's defaults do not declare")


# ---------------------------------------------------------------- commands

def cmd_create(args):
    from .create import compose, create_jobs, load_source

    source, grid = None, []
    for item in args.items:
        if "=" in item:
            grid.append(item)
        elif source is None:
            source = item
        else:
            raise UsageError(f"create: a second SOURCE {item!r} (grid arguments look like key=value)")
    generator, experiment = load_source(source) if source is not None else (None, None)
    experiment = args.experiment or experiment
    if experiment is None:
        raise UsageError("create: --experiment MOD:ATTR or FILE.py:ATTR is required "
                         "(or define EXPERIMENT in the source module)")
    if args.print_defaults and not args.print_config:
        return _print_experiment_config(experiment, None)
    configs = compose(generator, grid)
    if args.print_defaults or args.print_config:
        return _print_experiment_config(experiment, configs if args.print_config else None)
    from .progress import Progress

    from .errors import Interrupted

    try:
        with Progress("creating jobs", quiet=args.quiet) as bar:
            result = create_jobs(args.tree, configs, experiment, name=args.name, priority=args.priority,
                                 dry_run=args.dry_run, duplicates="add" if args.allow_duplicates else "skip",
                                 check_keys=not args.no_check_keys, progress=bar.update)
    except Interrupted as exc:
        _print_created(exc.result, args)  # the jobs that were written, before the one-line error
        raise
    _print_created(result, args)
    verb = "would create" if args.dry_run else "created"
    print(f"{verb} {len(result.created)}, skipped {len(result.skipped)} duplicates", file=sys.stderr)
    return 0


def _print_created(result, args):
    for path in result.created:
        print(f"dbdict-run-job run {path}" if args.print_commands else path)
    sys.stdout.flush()


def _print_experiment_config(experiment, configs):
    """--print-defaults (configs None) or --print-config: YAML on stdout, nothing created."""
    import yaml

    from .experiment import declared_defaults, resolve_experiment
    from .values import check_config, merge

    spec, pythonpath = resolve_experiment(experiment)
    defaults = declared_defaults(spec, pythonpath) or {}
    if configs is None:
        if not defaults:
            print(f"# {experiment} declares no defaults", file=sys.stderr)
            return 0
        sys.stdout.write(yaml.safe_dump(defaults, default_flow_style=False, sort_keys=False))
        return 0
    docs = [merge(defaults, check_config(c, where=f"config #{i}")) for i, c in enumerate(configs)]
    sys.stdout.write(yaml.safe_dump_all(docs, default_flow_style=False, sort_keys=False))
    return 0


def cmd_run(args):
    from .runner import run_job

    outcome = run_job(args.jobdir, fork_here=True, **options.given(args))
    if outcome.message and not (args.quiet and outcome.exit_code == 0):
        print(outcome.message, file=sys.stderr)
    return outcome.exit_code


def cmd_work(args):
    if args.workers is not None or args.gpus is not None or args.gpus_per_worker is not None:
        from .pool import run_pool

        return run_pool(args)  # N supervised `dbdict work` processes (DESIGN.md 12)
    from .runner import work

    select_rows = _selector(args)

    def report(outcome):
        if args.quiet:
            return
        message = outcome.message
        if message.startswith(outcome.jobdir + ": "):
            message = message[len(outcome.jobdir) + 2:]
        detail = f"  ({message})" if message and outcome.status != "done" else ""
        print(f"{outcome.status:8} {outcome.jobdir}{detail}", file=sys.stderr)

    counts = work(args.tree, max_jobs=args.max_jobs, wait=args.wait, select_rows=select_rows,
                  on_outcome=report, **options.given(args))
    interrupted = counts.pop("interrupted", 0)
    if not counts and not interrupted:
        from . import jobdir as jd
        from .create import TREE_MARKER, check_tree

        # The marker first (one stat): a walk for a job only where `create` left none.
        if not os.path.isdir(os.path.join(args.tree, TREE_MARKER)):
            check_tree(args.tree, next(iter(jd.iter_jobdirs(args.tree)), None) is not None)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runnable job"
    if not args.quiet:
        print(f"worker finished: {summary}" + (" (stopped by a signal)" if interrupted else ""),
              file=sys.stderr)
    if interrupted:
        return ExitCode.INCOMPLETE
    if counts and set(counts) == {"failed"}:
        return ExitCode.FAILED  # every job it ran failed: a script must notice
    return ExitCode.OK


def _selector(args):
    """A function tree -> rows for the query filters given, or None when there are none."""
    filters = getattr(args, "filters", None)
    where = getattr(args, "where", None)
    if not filters and not where:
        return None
    from . import query

    return lambda tree: query.select(tree, **query.selection(args))


def cmd_cmdline(args):
    import json

    from .booking import utc_iso
    from .create import create_jobs
    from .runner import run_job
    from .values import parse_grid

    configs = parse_grid(args.assignments)
    if len(configs) != 1:
        raise UsageError("cmdline runs one experiment: use `dbdict create` for a grid of values")
    if args.print_defaults or args.print_config:
        return _print_experiment_config(args.experiment, configs if args.print_config else None)
    from .runner import make_options

    make_options(**options.given(args))  # bad options must not leave a job directory behind
    stamp = utc_iso().replace(":", "").replace("-", "")
    name = f"{stamp}-{os.getpid()}"
    result = create_jobs(args.tree, configs, args.experiment, name=name, duplicates="add",
                         check_keys=not args.no_check_keys, marker=False)
    jobdir = result.created[0]
    print(f"job directory: {jobdir}", file=sys.stderr)
    outcome = run_job(jobdir, **options.given(args))
    from .jobdir import read_latest_state

    _, state = read_latest_state(jobdir)
    print(json.dumps(state, indent=2, ensure_ascii=False))
    if outcome.exit_code and outcome.message:
        print(outcome.message, file=sys.stderr)
    return outcome.exit_code


def _lazy(module, name):
    """A command implemented in another module, imported only when that command runs."""
    def command(args):
        import importlib

        return getattr(importlib.import_module(f".{module}", __package__), name)(args)
    return command


cmd_query = _lazy("query", "run")
def cmd_status(args):
    """ops' status, then one line per SLURM submission of the tree that lost workers or still
    runs (`slurm.submission_health`: read only when TREE/.dbdict/slurm/ records one)."""
    import json

    from . import jobdir as jd
    from . import ops

    if getattr(args, "watch", None) or not os.path.isdir(os.path.join(args.tree, jd.SLURM_DIR)):
        return ops.cmd_status(args)
    from .slurm import submission_health

    if args.format == "json":
        report = ops.status(args.tree, args.filters, args.where, progress=not getattr(args, "quiet", False))
        report["slurm"] = submission_health(args.tree)
        print(json.dumps(report, indent=2))
        return 0
    code = ops.cmd_status(args)
    shown = [s for s in submission_health(args.tree) if s["died"] or s["running"]]
    if shown:
        print("\nslurm submissions:")
    for s in shown:
        running = "? tasks running (squeue did not answer)" if s["running"] is None else \
            f"{s['running']} task{'s' if s['running'] != 1 else ''} running"
        lost = ""
        if s["died"]:
            lost = (f"; {s['died']} worker{'s' if s['died'] != 1 else ''} died abnormally, "
                    f"{s['restarted']} replaced")
            if s["not_restarted"]:
                lost += f", {s['not_restarted']} NOT replaced (3 restarts per task): this submission lost workers"
        print(f"  job {s['job']}: {running}{lost}  ({os.path.basename(s['script'])})")
    return code


cmd_requeue = _lazy("ops", "cmd_requeue")
cmd_cancel = _lazy("ops", "cmd_cancel")
cmd_show = _lazy("ops", "cmd_show")
cmd_logs = _lazy("ops", "cmd_logs")
cmd_submit = _lazy("slurm", "run")


# ---------------------------------------------------------------- parsers

def _add_filters(p):
    from . import query

    query.add_filter_arguments(p)
    p.set_defaults(_rest="filters")


_TOP_EXAMPLES = {
    "create": "{prog} create tree -e examples/train.py:main lr={{0.1,0.01}} seed={{1,2,3}}",
    "run": "{prog} run tree/3f/3f2a91c0d4e5",
    "work": "{prog} work tree",
    "query": "{prog} query tree --sort valid_err",
}


def build_parser(prog="dbdict", only=None, commands=None):
    """The parser of `prog`; `only` builds just those subcommands (start-up time), and
    `commands` are the subcommands `prog` offers at all (its help shows only those)."""
    offered = commands or COMMANDS
    examples = "\n".join("  " + _TOP_EXAMPLES[c].format(prog=prog) for c in _TOP_EXAMPLES if c in offered)
    parser = Parser(prog=prog, **_help(f"""
Experiments on a shared filesystem: create jobs, book and run them from many workers,
resume preempted ones, and query the results with SQL. No database server.

example:
{examples}
"""))
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def add(name, func, help_text, description):
        if only is not None and name not in only:
            return None
        p = sub.add_parser(name, help=help_text, **_help(description))
        p.set_defaults(func=func, _parser=p)
        return p

    p = add("create", cmd_create, "create job directories from a generator or a grid", f"""
Create one job directory per distinct config. SOURCE (FILE.py:ATTR or MOD:ATTR) names a
generator or iterable of dicts; key=VALUES grid arguments ({{a,b}} for alternatives) are
crossed with every dict of SOURCE (or with one empty dict). Duplicates are skipped.
Prints each created job directory; "created N, skipped M duplicates" goes to stderr.

examples:
  {prog} create tree examples/sweep.py:jobs --experiment examples/train.py:main
  {prog} create tree --experiment examples/train.py:main lr={{0.1,0.01}} seed={{1,2,3}}
  {prog} create tree --experiment mypkg.train:main lr=0.1 --name "lr{{lr}}/s{{seed}}"
""")
    if p:
        p.add_argument("tree", metavar="TREE", help="the tree (created if missing)")
        p.add_argument("items", nargs="*", metavar="SOURCE|key=VALUES", help="job source and grid arguments")
        p.set_defaults(_rest="items")
        p.add_argument("--experiment", "-e", metavar="MOD:ATTR|FILE.py:ATTR", help="the experiment to run")
        p.add_argument("--name", metavar="TEMPLATE", help='directory template, e.g. "{model.arch}/lr{lr}"')
        p.add_argument("--priority", type=_number, default=1.0, help="priority (higher runs first; default 1)")
        p.add_argument("--dry-run", action="store_true", help="list what would be created, write nothing")
        p.add_argument("--print-commands", action="store_true", help="print `dbdict-run-job run DIR` lines")
        p.add_argument("--allow-duplicates", action="store_true",
                       help="add a repeated config under a new name instead of skipping it")
        _add_config_printing(p)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = add("run", cmd_run, "book and run one job", f"""
Book one job and run its experiment once. Exit codes: 0 done, 1 failed, 2 usage or input
error, 3 incomplete (requeued), 4 not runnable (running elsewhere, done, failed, canceled).

example:
  {prog} run tree/3f/3f2a91c0d4e5
""")
    if p:
        p.add_argument("jobdir", metavar="JOBDIR")
        _add_run_options(p)

    p = add("work", cmd_work, "worker loop: run the tree's runnable jobs by priority", f"""
Book runnable jobs by priority and run them until none is left. Start as many workers as
you like, on any hosts sharing the tree. SIGTERM/SIGINT/SIGHUP/SIGUSR1/SIGUSR2 ask the running
experiment to stop (channel() answers 'stop'), requeue its job, and end the worker.

--workers N (or --gpus) starts a pool: N such workers on this machine, each with these same
arguments, logs in TREE/.dbdict/workers/, one progress line here. A worker killed by a
signal (kill -9, the OOM killer) is replaced and its job taken over at once; one Ctrl-C,
SIGTERM or SIGHUP stops them all (jobs back to ready, exit 3). With --gpus each worker's
experiments see CUDA_VISIBLE_DEVICES = its own --gpus-per-worker devices (dbdict.gpus).

examples:
  {prog} work tree
  {prog} work tree --wait --lease 120 --heartbeat 10      # also recover dead workers' jobs
  {prog} work tree model.arch=resnet --where "lr < 0.1" --max-jobs 5
  {prog} work tree --workers 4                            # a pool of 4 workers
  {prog} work tree --gpus all                             # one worker per GPU
  {prog} work tree --gpus 0,1,2,3 --gpus-per-worker 2     # two workers: 0,1 and 2,3
""")
    if p:
        p.add_argument("tree", metavar="TREE")
        _add_filters(p)
        p.add_argument("--max-jobs", type=_positive_int, metavar="N", help="stop after N jobs")
        p.add_argument("--wait", action="store_true",
                       help="keep polling while jobs run elsewhere (takes over stale ones)")
        _add_run_options(p)
        g = p.add_argument_group("a pool of workers on this machine (DESIGN.md 12)")
        g.add_argument("--workers", type=_positive_int, metavar="N",
                       help="run N supervised workers, each with the other arguments (default with "
                            "--gpus: one per --gpus-per-worker devices)")
        g.add_argument("--gpus", metavar="LIST|all",
                       help="devices to share out, e.g. 0,1,2,3, or all (CUDA_VISIBLE_DEVICES, else nvidia-smi -L)")
        g.add_argument("--gpus-per-worker", type=_positive_int, metavar="K",
                       help="devices per worker, in its CUDA_VISIBLE_DEVICES (default 1)")

    p = add("cmdline", cmd_cmdline, "run an experiment once in a fresh job directory", f"""
Run an experiment once with key=value parameters (typed like YAML scalars), in a fresh job
directory under ./dbdict-cmdline/, and print the final state as JSON.

example:
  {prog} cmdline examples/train.py:main lr=0.1 seed=3 model.arch=mlp
""")
    if p:
        p.add_argument("experiment", metavar="MOD:ATTR|FILE.py:ATTR")
        p.add_argument("assignments", nargs="*", metavar="key=value")
        p.set_defaults(_rest="assignments")
        p.add_argument("--tree", default="dbdict-cmdline", help="where the job directory goes")
        _add_config_printing(p)
        _add_run_options(p)

    if only is None or "submit" in only:
        from . import slurm  # ~0.5 ms: its heavy imports wait until a submission runs

        p = add("submit", cmd_submit, "submit workers for the tree to a SLURM cluster", slurm.HELP)
        slurm.add_arguments(p)

    p = add("query", cmd_query, "query a tree with filters, expressions or SQL", f"""
Index every job of the tree (one row per job, one column per dotted key) and print rows.

examples:
  {prog} query tree status=done --sort -valid_err --limit 5
  {prog} query tree --where 'lr > 0.01 and model.arch == "resnet"' --format csv
  {prog} query tree --sql 'select "model.arch", min(valid_err) from jobs group by 1'
""")
    if p:
        from . import query

        query.add_arguments(p)
        p.set_defaults(_rest="filters")

    p = add("status", cmd_status, "counts per status and the running jobs", f"""
Counts per status (ready, booked, running, stale, done, failed, canceled, corrupt) and the
running jobs with host, pid and heartbeat age.

examples:
  {prog} status tree
  {prog} status tree --format json
  {prog} status tree --watch 5
""")
    if p:
        p.add_argument("tree", metavar="TREE")
        _add_filters(p)
        p.add_argument("--format", choices=("table", "json"), default="table",
                       help="table for people, json for scripts (default table)")
        p.add_argument("--watch", type=_seconds, nargs="?", const=2.0, metavar="S",
                       help="refresh every S seconds (default 2) until Ctrl-C")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = add("requeue", cmd_requeue, "make failed, canceled or stale jobs ready again", f"""
Make jobs ready again, safely while workers run (each change is a claim, DESIGN.md 4).
By default failed, canceled and stale jobs (stale: booking proved the holder gone).
--force changes two things: without --status it also requeues done jobs, and it lets
--status name running or booked jobs, whose live worker is then fenced at its next
heartbeat (a person's decision: the attempt is lost; plain requeue never does that).

examples:
  {prog} requeue tree                          # failed, canceled and stale jobs
  {prog} requeue tree --status failed lr=0.1 --priority 5
  {prog} requeue tree --force                  # also done jobs
  {prog} requeue tree --force --fresh lr=0.1   # run done jobs again from scratch
  {prog} requeue tree --status running --force arch=vit   # take live jobs back

--fresh: the next attempt starts in an empty workdir instead of resuming from the last
checkpoint; the old workdir is kept beside it (JOBDIR/workdir.<N>.kept), never deleted.
""")
    if p:
        p.add_argument("tree", metavar="TREE")
        _add_filters(p)
        p.add_argument("--status", default=None, metavar="S,...",
                       help="statuses to requeue (default failed,canceled,stale; with --force also done)")
        p.add_argument("--priority", type=_number, help="the new priority")
        p.add_argument("--force", action="store_true",
                       help="also requeue done jobs, and allow --status running/booked (fences their live worker)")
        p.add_argument("--fresh", action="store_true",
                       help="the next attempt starts in an empty workdir (the old one is kept beside it)")
        p.add_argument("--dry-run", action="store_true", help="list what would change")
        p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")

    p = add("cancel", cmd_cancel, "cancel ready, running and stale jobs", f"""
Mark jobs canceled. A running job's worker stops it at its next heartbeat; its last saved
state is kept. Done and failed jobs are left alone.

example:
  {prog} cancel tree lr=0.1
""")
    if p:
        p.add_argument("tree", metavar="TREE")
        _add_filters(p)
        p.add_argument("--dry-run", action="store_true", help="list what would change")
        p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")

    p = add("show", cmd_show, "show a job's config, state and attempt history", f"""
example:
  {prog} show tree/3f/3f2a91c0d4e5
""")
    if p:
        p.add_argument("jobdir", metavar="JOBDIR")
        p.add_argument("--format", choices=("text", "json"), default="text",
                       help="text for people, json for scripts (default text)")

    p = add("logs", cmd_logs, "print a job's stdout or stderr", f"""
examples:
  {prog} logs tree/3f/3f2a91c0d4e5
  {prog} logs tree/3f/3f2a91c0d4e5 --stderr --attempt 2
""")
    if p:
        p.add_argument("jobdir", metavar="JOBDIR")
        p.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
        p.add_argument("--attempt", type=_positive_int, metavar="N", help="only attempt N")
        p.add_argument("-f", "--follow", action="store_true", help="keep printing as the job writes")
    if only is None or {"history", "plot", "report"} & set(only):
        from .views import add_commands  # their code loads only when run; their options need the query's

        add_commands(add, prog)
    if only is None or "search" in only:
        from .searches import add_command as add_search  # DESIGN.md 11

        add_search(add, prog)
    return parser


def _version():
    from . import __version__

    return __version__


COMMANDS = ("create", "run", "work", "cmdline", "query", "status", "requeue", "cancel", "show", "logs",
            "submit", "history", "plot", "report", "search")


def fix_negative_sort(argv):
    """Rewrite `--sort -key` as `--sort=-key`: argparse would take `-key` for an option."""
    out, i = [], 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg == "--sort" and i + 1 < len(argv) and argv[i + 1].startswith("-") and not argv[i + 1].startswith("--"):
            out.append(f"--sort={argv[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def _collect_rest(parser, args, extra):
    """Positional lists (SOURCE, key=value) may be split by options: `create T -e X lr=1`."""
    rest = getattr(args, "_rest", None)
    bad = [a for a in extra if a.startswith("-") or rest is None]
    parser = getattr(args, "_parser", None) or parser  # the subcommand's: its --help, its options
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        setattr(args, rest, list(getattr(args, rest, None) or []) + extra)


def main(argv=None, prog="dbdict", only=None):
    argv = list(sys.argv[1:] if argv is None else argv)

    def parse():
        # Build only the subcommand asked for: the whole parser costs ~10 ms of start-up.
        command = next((a for a in argv if not a.startswith("-")), None)
        build = (command,) if command in COMMANDS and (only is None or command in only) else only
        parser = build_parser(prog, build, commands=only)
        args, extra = parser.parse_known_args(fix_negative_sort(argv))
        _collect_rest(parser, args, extra)
        args._argv = argv  # a pool (work --workers) hands its own arguments to each worker
        return args

    return run_command(parse, argv)


def main_run_job(argv=None):
    """`dbdict-run-job run DIR` and `dbdict-run-job work TREE`: the seed's command names."""
    return main(argv, prog="dbdict-run-job", only=("run", "work"))


QUERY_HELP = """
Index every job of TREE (one row per job, one column per dotted key) and print rows
(= `dbdict query`).

examples:
  {prog} tree status=done --sort -valid_err --limit 5
  {prog} tree --where 'lr > 0.01 and model.arch == "resnet"' --format csv
  {prog} tree --sql 'select "model.arch", min(valid_err) from jobs group by 1'
"""


def build_query_parser(prog="dbdict-query"):
    from . import query

    parser = Parser(prog=prog, usage="%(prog)s TREE [key=value ...] [--where EXPR | --sql SQL] [options]",
                    **_help(QUERY_HELP.format(prog=prog)))
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    query.add_arguments(parser)
    parser.set_defaults(func=cmd_query, _rest="filters", _parser=parser)
    return parser


def main_query(argv=None):
    """`dbdict-query TREE ...` = `dbdict query TREE ...`, under its own name."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def parse():
        parser = build_query_parser()
        if not [a for a in argv if not a.startswith("-")] and not {"-h", "--help"} & set(argv):
            parser.error("expected a TREE: dbdict-query TREE [key=value ...] [--where EXPR | --sql SQL]")
        args, extra = parser.parse_known_args(fix_negative_sort(argv))
        _collect_rest(parser, args, extra)
        return args

    return run_command(parse, argv)


if __name__ == "__main__":
    sys.exit(main())

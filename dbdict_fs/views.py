"""The commands that look at a sweep: `history`, `plot`, `report` (DESIGN.md 10).

Only their argument parsers live here (cli.py builds them); the code that reads histories,
draws or writes HTML is imported when the command runs, so other commands never pay for it.
"""


def _lazy(module, name):
    def command(args):
        import importlib

        return getattr(importlib.import_module(f".{module}", __package__), name)(args)
    return command


def add_commands(add, prog):
    """Register the three commands with cli.build_parser's `add`."""
    from . import output, query
    from .argtypes import positive_seconds

    p = add("history", _lazy("views", "cmd_history"), "print a job's metric history (channel.log)", f"""
Print the committed history of one job: the points its experiment recorded with
channel.log(step, name=value, ...), one row per (step, metric), columns path, step, metric, value.
A step logged again after a resume shows its last value once.

examples:
  {prog} history tree/3f/3f2a91c0d4e5
  {prog} history tree/3f/3f2a91c0d4e5 --format csv > curve.csv
""")
    if p:
        p.add_argument("jobdir", metavar="JOBDIR")
        p.add_argument("--metric", action="append", metavar="NAME", help="only this metric (repeatable)")
        output.add_output_arguments(p, columns=False)

    p = add("plot", _lazy("plot", "cmd_plot"), "plot a metric against a parameter, or learning curves", f"""
Draw a metric against a parameter (--x/--y), one series per --by group, with the mean and
spread over --over (e.g. seeds); or learning curves from the jobs' histories (--curve).
Writes a PNG or SVG (-o, by its extension). Needs matplotlib: pip install 'dbdict_fs[plot]'.

examples:
  {prog} plot tree --x lr --y valid_err --by model.arch --logx -o lr.png
  {prog} plot tree --x lr --y valid_err --over seed -o lr.svg
  {prog} plot tree --curve valid_err --by lr status=done -o curves.png
""")
    if p:
        p.add_argument("tree", metavar="TREE")
        query.add_filter_arguments(p)
        p.add_argument("--x", metavar="KEY", help="the parameter on the x axis")
        p.add_argument("--y", metavar="KEY", help="the metric on the y axis")
        p.add_argument("--curve", metavar="METRIC", help="learning curves of METRIC from the histories")
        p.add_argument("--by", metavar="KEY", help="one series per value of KEY")
        p.add_argument("--over", metavar="KEY", help="average over KEY (e.g. seed): mean line, min-max band")
        p.add_argument("--logx", action="store_true", help="logarithmic x axis")
        p.add_argument("--logy", action="store_true", help="logarithmic y axis")
        p.add_argument("--title", metavar="TEXT", help="the plot's title")
        p.add_argument("-o", "--output", metavar="FILE", required=True, help="FILE.png or FILE.svg")
        p.add_argument("--no-cache", action="store_true", help="read every job's files (skip the index cache)")

    p = add("report", _lazy("report", "cmd_report"), "write one self-contained HTML report of a sweep", f"""
Write one HTML file that needs no server and no network (open it after rsync): status counts
(diverged runs, whose metric is NaN or infinite, counted apart), the best configurations by
--metric, a panel of the metric against each parameter (categories as strips and boxes),
parallel coordinates whose axes filter the table, parameter importance, learning curves labelled
by their parameters, best-so-far plots of searches, and a sortable, filterable table of every job.
Seeds (keys named seed or *_seed, and --over keys) are averaged over, never plotted; keys that
are the same in every job are shown once in the header.

examples:
  {prog} report tree -o sweep.html --metric valid_err
  {prog} report tree -o sweep.html --metric accuracy --maximize --top 5 --over data_split
  {prog} report tree -o sweep.html --watch 30      # rewrite every 30 s; the open page follows
""")
    if p:
        p.add_argument("tree", metavar="TREE")
        query.add_filter_arguments(p)
        p.add_argument("-o", "--output", metavar="FILE.html", required=True, help="where to write the report")
        p.add_argument("--metric", metavar="KEY", help="the metric to rank jobs by (default: the first "
                                                      "numeric result, e.g. valid_err)")
        g = p.add_mutually_exclusive_group()
        g.add_argument("--minimize", dest="maximize", action="store_false", help="lower is better (default)")
        g.add_argument("--maximize", dest="maximize", action="store_true", help="higher is better")
        p.set_defaults(maximize=False)
        p.add_argument("--top", type=int, default=10, metavar="K",
                       help="best configurations listed and curves drawn (default 10)")
        p.add_argument("--over", action="append", metavar="KEY",
                       help="a replicate key to average over, like seed (repeatable; seed and *_seed are already)")
        p.add_argument("--watch", type=positive_seconds, metavar="S",
                       help="rewrite the file every S seconds until Ctrl-C; the open page reloads itself")
        p.add_argument("--title", metavar="TEXT", help="the report's title (default: the tree)")
        p.add_argument("--rows", type=int, default=1000, metavar="N",
                       help="job-table rows shown before 'show all' (default 1000; sorting and "
                            "filtering always cover every job)")
        p.add_argument("--no-cache", action="store_true", help="read every job's files (skip the index cache)")
        p.add_argument("-q", "--quiet", action="store_true", help="do not print the report's path")


def cmd_history(args):
    import os

    from . import output
    from .errors import JobNotFound
    from .histories import COLUMNS, history

    if not os.path.isdir(args.jobdir):
        raise JobNotFound(args.jobdir, "no such directory")
    rows = history(args.jobdir)
    if args.metric:
        rows = [r for r in rows if r[2] in set(args.metric)]
    output.print_rows([dict(zip(COLUMNS, r)) for r in rows], list(COLUMNS), args.format)
    return 0

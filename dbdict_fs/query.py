"""`dbdict query` / `dbdict-query`: filters, --where, --sql, sorting and output (DESIGN.md 7).

The filters are shared with work, status, requeue and cancel: add_filter_arguments() adds
them to a parser, select() turns them into rows.
"""

import re
import sys

from . import output
from .argtypes import nonneg_int
from .errors import UsageError
from .index import PATH, STATUS, build_index

# Command-line values are typed like YAML scalars (values.parse_scalar, which needs PyYAML);
# these common shapes are typed here without importing it, exactly as PyYAML would.
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)\Z")
_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?\Z")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_YAML_WORDS = {w for base in ("yes", "no", "true", "false", "on", "off", "null")
               for w in (base, base.capitalize(), base.upper())}
_SAFE_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info",
                 "function_list", "pragma_list", "collation_list", "compile_options"}


def parse_value(text):
    """A filter's value typed like a YAML scalar: 3 -> int, 0.1 -> float, true -> True,
    null -> None, [1, 2] -> list, anything else -> str. Never eval."""
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    if _WORD.match(text) and text not in _YAML_WORDS:
        return text
    from .values import parse_scalar

    return parse_scalar(text)


def parse_filters(tokens):
    """['lr=0.1', 'status=done'] -> [('lr', 0.1), ('status', 'done')]."""
    from .values import split_assignment

    out = []
    for token in tokens or ():
        if token.startswith("`") and "`=" in token[1:]:  # `status`=x: the user's key `status`
            key, _, text = token.partition("`=")
            key += "`"
        else:
            key, text = split_assignment(token)
        out.append((key, parse_value(text)))
    return out


def add_filter_arguments(parser):
    """key=value filters (ANDed) and --where EXPR, as every command that selects jobs takes."""
    parser.add_argument("filters", nargs="*", metavar="key=value",
                        help="keep jobs whose key equals the value (typed like YAML: lr=0.01, "
                             "model.arch=resnet; status=done means dbdict.status=done, "
                             "even in a tree with a user key `status`: that one is `status`=VALUE)")
    parser.add_argument("--where", metavar="EXPR",
                        help="a boolean expression over columns: 'lr > 0.01 and model.arch == \"resnet\"' "
                             "(= != < <= > >=, and/or/not, in (...), like, is null)")
    parser.set_defaults(_rest="filters")


def add_arguments(parser):
    """The arguments of `dbdict query` / `dbdict-query`."""
    parser.add_argument("tree", metavar="TREE")
    add_filter_arguments(parser)
    parser.add_argument("--sql", metavar="SQL",
                        help="run a read-only SQL query on the table `jobs` (quote dotted names: \"model.arch\")")
    parser.add_argument("--sort", metavar="[-]KEY[,...]",
                        help="sort by these columns, `-key` descending (NULLs last); default: by path")
    parser.add_argument("--limit", type=nonneg_int, metavar="N", help="print at most N rows")
    output.add_output_arguments(parser)
    parser.add_argument("--no-cache", action="store_true",
                        help="read every job's files (skip the index cache in ~/.cache/dbdict_fs)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no warnings on stderr")


_SELECT_OPTIONS = ("filters", "where", "sort", "limit", "no_cache")


def selection(args):
    """The selection options a command's parsed arguments carry, for select(tree, **them)."""
    return {name: getattr(args, name, None) for name in _SELECT_OPTIONS}


def _normalize_filters(filters):
    """['k=v', ...], [(k, v), ...] or a dict -> [(k, v), ...] or the dict; status names checked."""
    if filters and not isinstance(filters, dict):
        filters = [f if isinstance(f, tuple) else parse_filters([f])[0] for f in filters]
    _check_status_names(filters)
    return filters


def _check_status_names(filters):
    """`status=finished` matches nothing, silently: name the statuses that exist instead."""
    from .jobdir import DERIVED_STATUSES, STATUSES

    items = filters.items() if isinstance(filters, dict) else (filters or ())
    valid = STATUSES + DERIVED_STATUSES
    for key, value in items:
        if key.lower() in ("status", STATUS) and value not in valid:
            from .argtypes import did_you_mean

            raise UsageError(f"{key}={value}: no such status{did_you_mean(str(value), valid)} "
                             f"(statuses: {', '.join(valid)})")


def _index(tree, **kw):
    """build_index, refusing a directory that is not a tree (create.check_tree)."""
    from .create import check_tree

    index = build_index(tree, **kw)
    check_tree(tree, index.conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchone() is not None)
    return index


def resolve_column(index, name):
    """A --columns name: a column, or `status`/`path`/`error` for their dbdict. columns; any
    other bookkeeping key must be spelled dbdict.KEY (`epoch` is not silently dbdict.epoch)."""
    column = index.resolve(name)
    if column.lower() != name.strip("`").lower() and name.lower() not in ("status", "path", "error"):
        raise UsageError(f"--columns: no column {name!r}; did you mean {column}?")
    return column


def select(tree, filters=None, where=None, sort=None, limit=None, no_cache=False, progress=False):
    """Rows (dicts, every column) of the jobs of `tree` matching `filters` (['k=v', ...],
    [(k, v)] or a dict, ANDed) and the `where` expression, sorted by `sort`, at most
    `limit`; `progress` shows a bar on a terminal's stderr for slow scans. (An argparse
    namespace as `filters` is still read, as select(tree, **selection(args)).)"""
    if hasattr(filters, "__dict__") and not isinstance(filters, (dict, list, tuple)):
        return select(tree, **selection(filters), progress=progress)
    index = _index(tree, cache=not no_cache, progress=bool(progress))
    return index.select(_normalize_filters(filters), where, sort, limit)


def run(args):
    """`dbdict query`: print the selected rows. Returns the exit code."""
    filters = _normalize_filters(args.filters)
    fmt = args.format
    if args.sql and (filters or args.where or args.sort):
        raise UsageError("--sql cannot be combined with key=value filters, --where or --sort")
    show_progress = (fmt == "table" or sys.stdout.isatty()) and not args.quiet
    index = _index(args.tree, cache=not args.no_cache, progress=show_progress)
    if args.sql:
        rows, columns = run_sql(index, args.sql, args.limit)
        if args.columns:
            missing = [c for c in args.columns if c not in columns]
            if missing:
                raise UsageError(f"--columns: {missing[0]!r} is not a column of the --sql result "
                                 f"({', '.join(columns)})")
            columns = args.columns
    else:
        rows = index.select(filters, args.where, args.sort, args.limit)
        if args.columns:
            columns = [c for name in args.columns for c in
                       (index.columns if name == "*" else [resolve_column(index, name)])]
        else:
            columns = default_columns(index, rows if fmt == "table" else None)
    if not args.sql:
        restore_types(rows)
    output.print_rows(rows, columns, fmt)
    if fmt == "table":
        corrupt = index.conn.execute('SELECT count(*) FROM jobs WHERE "dbdict.status" = ?', ("corrupt",)).fetchone()[0]
        if corrupt and not args.quiet:
            print(f"warning: {corrupt} corrupt job{'s' if corrupt != 1 else ''} in {args.tree} "
                  f"(list them: dbdict query {args.tree} status=corrupt --columns path,error)", file=sys.stderr)
    return 0


def restore_types(rows):
    """Give back the types SQLite has not: NaN is NULL in SQL and a boolean 1/0. The index
    lists each row's NaN keys in dbdict.nan (so a diverged run prints as nan, not as a
    missing result) and its boolean keys in dbdict.bool (so they print as true/false)."""
    from .index import BOOL, NAN

    for row in rows:
        nan, bools = row.get(NAN), row.get(BOOL)
        if nan:
            for key in nan.split(","):
                if key and row.get(key) is None:
                    row[key] = float("nan")
        if bools:
            for key in bools.split(","):
                if row.get(key) in (0, 1):
                    row[key] = bool(row[key])
    return rows


restore_nan = restore_types  # the older name


def default_columns(index, rows=None):
    """The user's keys, then status and path; for a table, only keys some row has a value for."""
    user = [c for c in index.columns if not c.startswith("dbdict.")]
    if rows is not None:
        from .index import NAN

        nan = {k for row in rows for k in (row.get(NAN) or "").split(",")}
        user = [c for c in user if c in nan or any(row.get(c) is not None for row in rows)]
    return user + [STATUS, PATH]


class _InterruptOnSigint:
    """While a query runs, SIGINT sets a flag that SQLite's progress handler turns into an
    interrupt (a Python signal handler only runs between bytecodes: the handler gives it one)."""

    def __init__(self):
        import signal

        self.hit = False
        try:
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self.previous = None

    def _on_sigint(self, signum, frame):
        self.hit = True

    def check(self):
        return 1 if self.hit else 0

    def restore(self):
        if self.previous is not None:
            import signal

            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


def run_sql(index, sql, limit=None):
    """Run a user's --sql read-only: the authorizer allows reading and functions only."""
    import sqlite3

    def authorize(action, arg1, arg2, dbname, source):
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            return sqlite3.SQLITE_DENY if (arg2 or "").lower() == "load_extension" else sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _SAFE_PRAGMAS:
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY

    conn = index.conn
    conn.set_authorizer(authorize)
    stop = _InterruptOnSigint()
    conn.set_progress_handler(stop.check, 10000)  # lets Ctrl-C reach a long query
    try:
        cursor = conn.execute(sql)
        if cursor.description is None:
            raise UsageError("--sql: the statement returned no rows (only SELECT queries are allowed)")
        columns = [d[0] for d in cursor.description]
        data = cursor.fetchall() if limit is None else cursor.fetchmany(limit)
    except (sqlite3.Error, sqlite3.Warning) as exc:
        if stop.hit:
            from .errors import Interrupted

            raise Interrupted("--sql: interrupted by Ctrl-C; no rows printed") from None
        raise UsageError(f"--sql: {exc}") from None
    finally:
        conn.set_authorizer(None)
        conn.set_progress_handler(None, 0)
        stop.restore()
    return [dict(zip(columns, row)) for row in data], columns

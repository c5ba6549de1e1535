"""Printing rows: one function for every format, and the shared --format/--columns options.

csv, json and jsonl are for pipes: no colour, no progress, nothing but the rows on stdout.
`table` is for people: rich on a terminal; elsewhere (a pipe, a file) a plain aligned
table, one line per row, that never wraps and prints 5,000 rows in a few milliseconds.
NaN prints as nan in a table and csv, and as the string "NaN" in json/jsonl (JSON has no NaN),
infinities as inf/-inf and "Infinity"/"-Infinity"; booleans as true/false everywhere.
"""

import json
import sys

FORMATS = ("table", "csv", "json", "jsonl")


def split_columns(text):
    """'a, b,c' -> ['a', 'b', 'c'] (the --columns value)."""
    columns = [c.strip() for c in text.split(",") if c.strip()]
    if not columns:
        import argparse

        raise argparse.ArgumentTypeError("expected column names separated by commas")
    return columns


def add_output_arguments(parser, formats=FORMATS, default="table", columns=True):
    """Add --format (and --columns) to a command that prints rows."""
    parser.add_argument("--format", choices=formats, default=default,
                        help=f"output format (default {default}); csv, json and jsonl are for pipes")
    if columns:
        parser.add_argument("--columns", type=split_columns, metavar="A,B,...",
                            help="columns to print, in this order (dotted names; `status` = dbdict.status)")


def print_rows(rows, columns=None, fmt="table", file=None):
    """Print row dicts in `fmt`. `columns` picks and orders them (default: every key seen).

    json is one array of flat objects keyed by the dotted column names, jsonl one object
    per line, csv a header row of the same names; missing values are null / empty.
    """
    file = sys.stdout if file is None else file
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    if fmt == "json":
        json.dump([{c: _json(row.get(c)) for c in columns} for row in rows], file, ensure_ascii=False)
        file.write("\n")
    elif fmt == "jsonl":
        for row in rows:
            file.write(json.dumps({c: _json(row.get(c)) for c in columns}, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        import csv

        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_csv(row.get(c)) for c in columns] for row in rows])
    elif fmt == "table" and not _isatty(file):
        _print_plain(rows, columns, file)
    elif fmt == "table":
        _print_table(rows, columns, file)
    else:
        raise ValueError(f"unknown output format {fmt!r} (one of {', '.join(FORMATS)})")


_NON_FINITE = {float("inf"): "Infinity", float("-inf"): "-Infinity"}


def _json(value):
    """A value strict JSON parsers accept: NaN and infinities as strings (JSON has neither)."""
    if type(value) is float and (value != value or value in _NON_FINITE):
        return "NaN" if value != value else _NON_FINITE[value]
    return value


def json_safe(data):
    """`data` (nested dicts and lists, as a state) with NaN and infinities as _json's strings."""
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list):
        return [json_safe(v) for v in data]
    return _json(data)


def _csv(value):
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    return value


def _isatty(file):
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


def _print_plain(rows, columns, file):
    """An aligned table without box drawing or wrapping: for pipes, files and narrow logs."""
    if not rows:
        file.write("no matching jobs\n")
        return
    cells = [[_cell(row.get(c)).replace("\n", "\\n") for c in columns] for row in rows]
    widths = [max(len(column), *(len(r[i]) for r in cells)) for i, column in enumerate(columns)]
    last = len(columns) - 1
    fmt_line = lambda values: "  ".join(v if i == last else v.ljust(widths[i])  # noqa: E731
                                        for i, v in enumerate(values)).rstrip() + "\n"
    file.write(fmt_line(columns))
    file.write(fmt_line(["-" * w for w in widths]))
    file.writelines(fmt_line(r) for r in cells)


def _cell(value):
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _print_table(rows, columns, file):
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=file)
    if not rows:
        console.print(Text("no matching jobs", style="dim"))
        return
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(_cell(row.get(c))) for c in columns))  # Text: values are never markup
    console.print(table)

"""argparse value types shared by every command, so bad numbers read the same everywhere."""

import argparse
import math


def _bounded(kind, what, low=None, above=False):
    """A type that parses `kind` and requires a finite value >= low (> low with `above`)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or (
                low is not None and (value <= low if above else value < low)):
            bound = "" if low is None else f" {'>' if above else '>='} {low:g}"
            raise argparse.ArgumentTypeError(f"expected {what}{bound}, got {text!r}")
        return value
    parse.__name__ = what.replace(" ", "_")
    return parse


seconds = _bounded(float, "a number of seconds", 0)
positive_seconds = _bounded(float, "a number of seconds", 0, above=True)
positive_int = _bounded(int, "a whole number", 1)
nonneg_int = _bounded(int, "a whole number", 0)
finite = _bounded(float, "a finite number")


def did_you_mean(word, candidates):
    """' (did you mean X?)' for the closest candidate to a mistyped word, or ''."""
    import difflib

    match = difflib.get_close_matches(word, [c for c in candidates if c], n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


def _columns():
    """The terminal's width as shutil.get_terminal_size reads it ($COLUMNS, then stdout's
    terminal, else 80), without importing shutil (and its bz2, lzma) at every command's start."""
    import os
    import sys

    try:
        columns = int(os.environ.get("COLUMNS", 0))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Width:
    """argparse builds a formatter for every add_argument (to check it), and the default one
    imports shutil for the width: give it the same width, read without shutil."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None, **more):
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width,
                         **more)


class HelpFormatter(_Width, argparse.HelpFormatter):
    pass


class RawDescriptionHelpFormatter(_Width, argparse.RawDescriptionHelpFormatter):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one UsageError line naming this (sub)command's --help,
    with a did-you-mean for a mistyped option or subcommand."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        from .errors import UsageError

        raise UsageError(f"{message}{self._hint(message)} (see {self.prog} --help)")

    def _hint(self, message):
        import re

        m = re.search(r"invalid choice: '?([^' ]+)'?", message)
        if m:
            choices = [c for a in self._actions if a.choices for c in a.choices]
            return did_you_mean(m.group(1), [str(c) for c in choices])
        m = re.search(r"unrecognized arguments: (.*)", message)
        if m:
            options = [o for a in self._actions for o in a.option_strings]
            for word in m.group(1).split():
                if word.startswith("-"):
                    hint = did_you_mean(word.split("=", 1)[0], options)
                    if hint:
                        return hint
        return ""

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

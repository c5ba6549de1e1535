"""Progress bars on stderr, only for people: when stderr is a terminal and not --quiet.

rich is imported only when a bar is shown; it respects NO_COLOR by itself.
"""

import os
import sys
import time


class Progress:
    """Call `update(done, total)`; a bar appears once the work has taken `delay` seconds."""

    def __init__(self, label, quiet=False, delay=1.0, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = not quiet and _is_tty(self.stream) and os.environ.get("TERM") != "dumb"
        self.delay = delay
        self.start = time.monotonic()
        self._bar = None
        self._task = None

    def update(self, done, total):
        if not self.enabled:
            return
        if self._bar is None:
            if time.monotonic() - self.start < self.delay:
                return
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TimeRemainingColumn

            self._bar = Bar("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=Console(file=self.stream), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total)
        self._bar.update(self._task, completed=done, total=total)

    def close(self):
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_tty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

"""Where errors become exit codes, for every command (`dbdict`, `dbdict-query`,
`dbdict-run-job`, `python -m dbdict_fs.slurm`): one line on stderr and an ExitCode."""

import os
import sys

from . import trees
from .errors import DbdictError, ExitCode


def run_command(parse, argv):
    """Parse, run, and turn every error into one line on stderr and its ExitCode: the one
    place where that happens (`--debug` or DBDICT_DEBUG=1 shows the traceback instead)."""
    debug = "--debug" in argv or os.environ.get("DBDICT_DEBUG") == "1"
    try:
        args = parse()
        # The tree (or job) a person named is resolved here, once (DESIGN 1, rev 4).
        for name in ("tree", "jobdir"):
            if isinstance(getattr(args, name, None), str):
                setattr(args, name, trees.resolve(getattr(args, name)))
        return int(args.func(args))
    except DbdictError as exc:
        if debug:
            raise
        print(f"Error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return ExitCode.OK
    except OSError as exc:
        if debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"Error: {where}{exc.strerror or exc}", file=sys.stderr)
        return ExitCode.USAGE
    except Exception as exc:  # noqa: BLE001 - a bug of ours: still one line, never a traceback
        if debug:
            raise
        print(f"Error: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return ExitCode.USAGE

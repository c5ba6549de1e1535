"""dbdict_fs: queue, book, resume and query experiments with only a shared directory tree.

The public API is re-exported here lazily, so `dbdict-query` does not pay for importing
the runner (and its dependencies) it does not use.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "COMPLETE": "experiment",
    "CreateResult": "create",
    "DbdictError": "errors",
    "Experiment": "experiment",
    "INCOMPLETE": "experiment",
    "Index": "index",
    "build_index": "index",
    "cancel": "ops",
    "create_jobs": "create",
    "history": "histories",
    "requeue": "ops",
    "run_job": "runner",
    "search": "searches",
    "show": "ops",
    "status": "ops",
    "work": "runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dbdict_fs' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

"""What an experiment is: the State it sees, its return values, and how its spec is found.

An experiment is `fn(state, channel)` returning COMPLETE (None) or INCOMPLETE (True), or a
class with `start()`, `resume()` and `run(channel)` (subclass `Experiment` for the defaults).
Specs are "module:attr" or "path/to/file.py:attr" (DESIGN.md 2 and 5).
"""

import importlib
import importlib.util
import os
import re
import sys

from .errors import ExperimentError

COMPLETE = None
INCOMPLETE = True

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class State(dict):
    """The job's state as a dict with attribute access (`state.lr`, `state.model.depth`).

    Nested mappings are States too, so `state.model.depth = 3` works and the whole
    state still serializes as plain JSON.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.update(*args, **kwargs)

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __setitem__(self, key, value):
        super().__setitem__(key, _wrap(value))

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"state has no key {name!r}") from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def subdict(self, prefix):
        """The nested mapping at a dotted `prefix` ("model" or "opt.sched"), created if absent."""
        node = self
        for part in prefix.split("."):
            if part not in node or not isinstance(node[part], dict):
                node[part] = State()
            node = node[part]
        return node

    def use_defaults(self, defaults):
        """Fill keys that are missing from a dict or an object's public attributes; returns self."""
        if not isinstance(defaults, dict):
            defaults = {k: getattr(defaults, k) for k in dir(defaults)
                        if not k.startswith("_") and not callable(getattr(defaults, k))}
        for key, value in defaults.items():
            if key not in self:
                self[key] = value
            elif isinstance(value, dict) and isinstance(self[key], dict):
                self[key].use_defaults(value)
        return self


def _wrap(value):
    if isinstance(value, dict) and not isinstance(value, State):
        return State(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class Experiment:
    """Base for class-form experiments: `start()` on a first run, `resume()` after an
    INCOMPLETE return or a lost attempt, then `run(channel)` returns COMPLETE or INCOMPLETE.

    `defaults` (a dict) fills keys the config leaves out, before start/resume.
    """

    defaults = {}

    def __init__(self, state, channel):
        self.state = state
        self.channel = channel

    def start(self):
        """Called on the first attempt, in a fresh workdir."""

    def resume(self):
        """Called when an earlier attempt ran in this workdir (load your checkpoint here)."""

    def run(self, channel):
        raise NotImplementedError("an Experiment subclass must define run(channel)")

    def log(self, step, **metrics):
        """Record metrics at `step` in the job's history: `self.channel.log(step, **metrics)`."""
        return self.channel.log(step, **metrics)


# ---------------------------------------------------------------- specs

def split_spec(spec):
    """'pkg.mod:attr' or 'path/file.py:attr' -> (target, attr, is_file)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ExperimentError(f"experiment {spec!r} must look like module:attr or path/file.py:attr")
    target, _, attr = spec.rpartition(":")
    if not _DOTTED.match(attr) or "." in attr or not target:
        raise ExperimentError(f"experiment {spec!r}: {attr!r} is not a name")
    is_file = target.endswith(".py") or os.sep in target
    if not is_file and not _DOTTED.match(target):
        raise ExperimentError(f"experiment {spec!r}: {target!r} is not a module name or a .py file")
    return target, attr, is_file


def _parse_source(path):
    """The top-level statements of a Python file, read with ast (never run), or None.

    ast is imported here, not at module level: the experiment's process never needs it.
    """
    import ast

    try:
        with open(path, "rb") as f:
            return ast, ast.parse(f.read(), filename=path).body
    except (OSError, SyntaxError, ValueError):
        return ast, None


def _defines(path, attr):
    """Whether a Python source file defines `attr` at top level (read with ast, not run)."""
    ast, body = _parse_source(path)
    if body is None:
        return True  # cannot tell without running it: the run will report the problem
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Expr):
            continue  # docstrings and bare calls define nothing
        else:
            return True  # conditional definitions etc.: do not guess
    return attr in names


def _installed_roots():
    import sysconfig

    paths = sysconfig.get_paths()
    return {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}


def resolve_experiment(spec, cwd=None):
    """Check an experiment spec at creation and make it runnable from any cwd or host.

    Returns (experiment, pythonpath): a file path becomes absolute; a module found outside
    the installed packages records the directory it was found in. Nothing is imported
    except parent packages of a dotted module (importlib.util.find_spec needs them).
    """
    cwd = os.path.abspath(cwd or os.getcwd())
    target, attr, is_file = split_spec(spec)
    if is_file:
        path = os.path.normpath(os.path.join(cwd, target))
        if not os.path.isfile(path):
            raise ExperimentError(f"experiment file {target!r} not found (from {cwd})")
        if not _defines(path, attr):
            raise ExperimentError(f"experiment file {path} defines no {attr!r}")
        return f"{path}:{attr}", []
    old_path = list(sys.path)
    sys.path.insert(0, cwd)
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError) as exc:
        raise ExperimentError(f"experiment module {target!r} cannot be found: {exc}") from None
    finally:
        sys.path[:] = old_path
    if found is None:
        raise ExperimentError(f"experiment module {target!r} not found (searched {cwd} and sys.path)")
    pythonpath = []
    origin = found.origin if found.has_location else None
    if origin and origin.endswith(".py"):
        if not _defines(origin, attr):
            raise ExperimentError(f"experiment module {target!r} ({origin}) defines no {attr!r}")
        root = os.path.dirname(origin)
        depth = target.count(".") + (1 if os.path.basename(origin) == "__init__.py" else 0)
        for _ in range(depth):
            root = os.path.dirname(root)
        real = os.path.realpath(root)
        if not any(real == r or real.startswith(r + os.sep) for r in _installed_roots()):
            pythonpath = [root]
    return spec, pythonpath


def _source_of(spec, pythonpath=()):
    target, _, is_file = split_spec(spec)
    if is_file:
        return target
    old_path = list(sys.path)
    sys.path[:0] = list(pythonpath or ())
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        return None
    finally:
        sys.path[:] = old_path
    return found.origin if found is not None and found.has_location else None


def _is_class(path, attr):
    ast, body = _parse_source(path)
    return any(isinstance(n, ast.ClassDef) and n.name == attr for n in body or ())


def declared_defaults(spec, pythonpath=()):
    """The `defaults` a class-form experiment declares, or None for a function experiment.

    Only a class's module is imported (to read inherited defaults too); the source is
    read with ast first, so function experiments never run at creation.
    """
    path = _source_of(spec, pythonpath)
    if not path or not path.endswith(".py") or not _is_class(path, split_spec(spec)[1]):
        return None
    try:
        obj = load_experiment(spec, pythonpath)
    except ExperimentError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code: report in one line
        raise ExperimentError(f"cannot import {spec} to read its defaults: {type(exc).__name__}: {exc} "
                              f"(--no-check-keys skips this)") from None
    defaults = getattr(obj, "defaults", None)
    return dict(defaults) if isinstance(defaults, dict) and defaults else None


def check_keys(config, defaults, where, prefix=""):
    """Reject keys an experiment does not declare (the seed's dconfig validation)."""
    import difflib

    for key, value in config.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, [str(k) for k in defaults], n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ExperimentError(f"{where}: unknown key '{prefix}{key}': the experiment declares "
                                  f"{', '.join(prefix + k for k in sorted(map(str, defaults)))}{hint}")
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            check_keys(value, defaults[key], where, f"{prefix}{key}.")


def load_experiment(spec, pythonpath=()):
    """Import the experiment callable or class named by a resolved spec (in the child)."""
    target, attr, is_file = split_spec(spec)
    for entry in reversed(list(pythonpath or ())):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    if is_file:
        directory = os.path.dirname(os.path.abspath(target))
        if directory not in sys.path:
            sys.path.insert(0, directory)
        name = "dbdict_experiment_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(target))[0])
        module_spec = importlib.util.spec_from_file_location(name, target)
        if module_spec is None:
            raise ExperimentError(f"cannot load experiment file {target}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ExperimentError(f"experiment {spec!r}: module has no attribute {attr!r}") from None


def call_experiment(obj, state, channel, resume):
    """Run a function- or class-form experiment; returns what it returned."""
    if isinstance(obj, type):
        import inspect

        defaults = getattr(obj, "defaults", None)
        if isinstance(defaults, dict):
            state.use_defaults(defaults)
        n = len([p for p in inspect.signature(obj).parameters.values()
                 if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
        instance = obj(state, channel) if n >= 2 else obj(state) if n == 1 else obj()
        step = getattr(instance, "resume" if resume else "start", None)
        if step is not None:
            step()
        return instance.run(channel)
    return obj(state, channel)

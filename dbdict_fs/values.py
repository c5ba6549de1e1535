"""Config values: what a key and a value may be, canonical hashing, and scalars typed on the
command line like YAML scalars (never eval)."""

import json
import math
import re

from .errors import UsageError

RESERVED = "dbdict"
HASH_LENGTH = 12
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_config(config, where="config"):
    """Validate a generated config: identifier keys at every level, `dbdict` reserved, and
    JSON-typed values (str, int, finite float, bool, None, lists, mappings), within the
    depth and size limits the readers enforce (a config they would call corrupt is refused).

    Returns a plain-dict deep copy (str and int subclasses such as numpy.str_ made plain),
    so later changes to the caller's dict do not leak in.
    """
    from .jobdir import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES

    if not isinstance(config, dict):
        raise UsageError(f"{where}: expected a dict, got {type(config).__name__}")
    if RESERVED in config:
        raise UsageError(f"{where}: the key {RESERVED!r} is reserved for dbdict_fs")
    checker = _Checker(where, MAX_NODES, MAX_DEPTH - 2)  # the state adds a level or two
    out = checker.mapping(config, "", 1)
    if checker.size > MAX_FILE_BYTES // 2:
        raise UsageError(f"{where}: the config is too large (about {checker.size} bytes; "
                         f"state files are capped at {MAX_FILE_BYTES})")
    return out


class _Checker:
    """One walk over a config, with a budget of values and of depth (no RecursionError)."""

    def __init__(self, where, nodes, depth):
        self.where, self.nodes, self.depth, self.size = where, nodes, depth, 0

    def fail(self, message):
        raise UsageError(f"{self.where}: {message}")

    def visit(self, name, depth):
        self.nodes -= 1
        if self.nodes < 0:
            self.fail("has too many values (a self-referencing or enormous config?)")
        if depth > self.depth:
            self.fail(f"{name} is nested deeper than {self.depth} levels")

    def mapping(self, mapping, prefix, depth):
        out = {}
        for key, value in mapping.items():
            if not isinstance(key, str) or not _IDENT.match(key):
                self.fail(f"key {prefix}{key!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")
            out[str(key)] = self.value(value, f"{prefix}{key}", depth)
            self.size += len(key) + 4
        return out

    def value(self, value, name, depth):
        self.visit(name, depth)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                self.fail(f"{name} is not valid text (it holds a lone surrogate)")
            self.size += len(value) + 2
            return str(value)
        if isinstance(value, int):
            if value.bit_length() > 4000 * 3.33:
                self.fail(f"{name} is an integer too large to store (over 4000 digits)")
            self.size += 20
            return int(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                self.fail(f"{name} = {value!r}: NaN and infinity are not allowed in a config")
            self.size += 20
            return float(value)
        if isinstance(value, dict):
            return self.mapping(value, name + ".", depth + 1)
        if isinstance(value, (list, tuple)):
            return [self.value(v, f"{name}[{i}]", depth + 1) for i, v in enumerate(value)]
        converted = _from_numpy(value)
        if converted is not value:
            self.nodes += 1  # the converted value is visited again: count it once
            return self.value(converted, name, depth)
        hint = " (quote it to keep it as text)" if type(value).__name__ in ("date", "datetime") else ""
        self.fail(f"{name} has a value of type {type(value).__name__}, "
                  f"not one of str, int, float, bool, null, list, mapping{hint}")


def _from_numpy(value):
    """A numpy scalar as the Python scalar it holds, an array as nested lists (as states
    convert them), without importing numpy; anything else unchanged."""
    if not type(value).__module__.startswith("numpy"):
        return value
    for method in ("item", "tolist"):
        try:
            return getattr(value, method)()
        except (AttributeError, TypeError, ValueError):
            continue
    return value


def canonical(config, experiment):
    """Sorted-key JSON of the user keys and the experiment: the text a job's identity hashes."""
    return json.dumps({"config": config, "experiment": experiment}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def config_hash(config, experiment):
    import hashlib  # here: a worker checking a config never hashes (hashlib costs ~2 ms to import)

    return hashlib.sha256(canonical(config, experiment).encode("utf-8")).hexdigest()[:HASH_LENGTH]


def parse_scalar(text):
    """Type a command-line value like a YAML scalar: 3 -> int, 0.1 -> float, true -> bool,
    null -> None, [1, 2] -> list; anything else stays a string. Dates stay strings."""
    import yaml  # lazily: the query path should not pay for it unless a filter needs it

    if not text.strip():
        return text
    try:
        value = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return text
    if type(value).__name__ in ("date", "datetime") or isinstance(value, dict):
        return text  # `2026-01-01` and `a: b` stay text: they are not scalars here
    return value


def split_assignment(arg):
    """'key=value' -> (key, text). Keys may be dotted (model.arch)."""
    key, sep, text = arg.partition("=")
    key = key.strip()
    if not sep or not key or not all(_IDENT.match(p) for p in key.split(".")):
        raise UsageError(f"expected key=value, got {arg!r}")
    return key, text


def parse_grid(args):
    """Grid arguments `lr={0.1,0.01} seed={1,2,3} model.arch=resnet` -> list of configs.

    `{a,b}` lists alternatives (crossed with every other key); a single value is used as is.
    A key given twice also lists alternatives, so bash's own brace expansion of an unquoted
    `lr={0.1,0.01}` into `lr=0.1 lr=0.01` means the same. Dotted keys build nested mappings.
    """
    axes = {}
    for arg in args:
        key, text = split_assignment(arg)
        stripped = text.strip()
        if stripped.startswith("{") and stripped.endswith("}") and ":" not in stripped:
            choices = [parse_scalar(t.strip()) for t in _split_top(stripped[1:-1])]
            if not choices:
                raise UsageError(f"{arg!r}: an empty set of values")
        elif not stripped:
            raise UsageError(f"{arg!r}: no value (write {key}=null for null, or {key}='\"\"' for an empty string)")
        elif stripped[0] in "{[" and parse_scalar(stripped) == stripped:
            raise UsageError(f"{arg!r}: an unclosed or malformed {stripped[0]}...{'}' if stripped[0] == '{' else ']'} "
                             f"(alternatives are written {key}={{a,b}}, a list {key}=[a,b])")
        else:
            choices = [parse_scalar(text)]
        axes.setdefault(key, []).extend(choices)
    for key in axes:
        for other in axes:
            if other.startswith(key + "."):
                raise UsageError(f"{key}= and {other}= conflict: {key} cannot be both a value and a mapping")
    configs = [{}]
    for key, choices in axes.items():
        configs = [_set_dotted(_deepcopy(c), key, v) for c in configs for v in choices]
    return configs


def _split_top(text):
    """Split on commas not inside brackets or quotes: '1,[2,3],"a,b"' -> 3 parts."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if cur or parts:
        parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def _deepcopy(config):
    return json.loads(json.dumps(config))


def _set_dotted(config, key, value):
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"{key}: {part} is already a value, not a mapping")
    node[parts[-1]] = value
    return config


def merge(base, extra):
    """Deep-merge `extra` into a copy of `base` (grid arguments over generated dicts)."""
    out = _deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def changed_config_key(config, state, prefix=""):
    """The first config key whose value the experiment changed in `state`, as a one-line
    reason, or None. Config keys identify the job (filters, duplicates): an experiment
    that overwrites one (`state.lr = 99`) would make queries lie, so it is refused."""
    for key, value in config.items():
        if not prefix and key == RESERVED:
            continue
        name = prefix + key
        if not isinstance(state, dict) or key not in state:
            return f"the experiment removed the config key {name!r}: store results under new keys"
        got = state[key]
        if isinstance(value, dict) and isinstance(got, dict):
            inner = changed_config_key(value, got, name + ".")
            if inner:
                return inner
        elif got != value or isinstance(got, bool) != isinstance(value, bool):
            return (f"the experiment overwrote the config key {name!r} ({value!r} -> {got!r}): "
                    f"config keys are the job's identity; store results under new keys")
    return None


def unstorable(state, prefix=""):
    """'key has a value of type X' for the first value a state file cannot hold, or None."""
    items = state.items() if isinstance(state, dict) else enumerate(state)
    for key, value in items:
        name = f"{prefix}{key}" if isinstance(state, dict) else f"{prefix[:-1]}[{key}]"
        if value is None or isinstance(value, (str, int, float, bool)):
            continue
        if isinstance(value, (dict, list, tuple)):
            inner = unstorable(value, name + ".")
            if inner:
                return inner
            continue
        if _from_numpy(value) is not value:
            continue
        hint = " (store it as text: str(value) or value.isoformat())" if type(value).__name__ in (
            "date", "datetime", "time", "timedelta") else ""
        return f"state key {name!r} has a value of type {type(value).__name__}, which cannot be stored in the state{hint}"
    return None

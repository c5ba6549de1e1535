"""Issue 9, fuzzing with hypothesis: values round-trip exactly, and damaged files never crash.

Profiles: "ci" (the default, bounded) and "long" (HYPOTHESIS_PROFILE=long for a long run).
They are applied per test with @settings, so other test modules keep their own settings.
"""

import json
import math
import os
import random
import shutil
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbdict_fs import create_jobs
from dbdict_fs import jobdir as jd
from dbdict_fs.errors import DbdictError

from conftest import experiment

settings.register_profile("ci", max_examples=60, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", 3000)), deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci")
                               if os.environ.get("HYPOTHESIS_PROFILE") in ("ci", "long") else "ci")

E = experiment("double")

try:
    from dbdict_fs.index import build_index
except ImportError:  # the index is being written
    build_index = None

# ---------------------------------------------------------------- strategies

# lowercase keys: keys differing only in case are a documented index limitation (corrupt)
keys = st.from_regex(r"[a-z_][a-z0-9_]{0,11}", fullmatch=True).filter(lambda k: k != "dbdict")
scalars = (st.none() | st.booleans()
           | st.integers(min_value=-(10 ** 40), max_value=10 ** 40)
           | st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=40)
           | st.sampled_from(["yes", "no", "null", "~", "1.0", "0x1f", "1e3", "2026-01-01", "12:30:00",
                             "'", '"', "a: b", "- x", "#c", "\n", " lead", "trail ", "\t", "\x00", "\u2028",
                             "\x85", "é", "日本", "🙂", "", "---", "...", "!!python/object:os.system",
                             "&a", "*a", "{", "[", "%", "@", "`"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(keys, inner, max_size=4), max_leaves=12)
configs = st.dictionaries(keys, values, max_size=6)


def same(a, b):
    """Equal, with the same types all the way down (1 != 1.0 != True, -0.0 != 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def flat(config, prefix=""):
    """The index's view of a config, by the rules of DESIGN.md 6, written independently."""
    out = {}
    for key, value in config.items():
        name = prefix + key
        if isinstance(value, dict) and value:
            out.update(flat(value, name + "."))
        elif isinstance(value, dict):
            out[name] = "{}"
        elif isinstance(value, list):
            out[name] = json.loads(json.dumps(value))  # compared after parsing the JSON text
        else:
            out[name] = value
    return out


class Scratch:
    """A fresh directory per example (function-scoped fixtures are shared across examples)."""

    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix="dbdict-fuzz-")
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


# ---------------------------------------------------------------- round trips

@settings(PROFILE)
@given(config=configs)
def test_create_round_trips_every_value(config):
    with Scratch() as base:
        result = create_jobs(os.path.join(base, "tree"), [config], E)
        job = result.created[0]
        _, state = jd.read_latest_state(job)
        user = {k: v for k, v in state.items() if k != "dbdict"}
        assert same(user, config), (user, config)
        with open(os.path.join(job, jd.CONFIG), encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
        assert same({k: v for k, v in loaded.items() if k != "dbdict"}, config)
        assert loaded["dbdict"]["hash"] == state["dbdict"]["hash"]
        assert same(jd.read_config(job), loaded)
        # creating it again is a duplicate: the hash is stable
        again = create_jobs(os.path.join(base, "tree"), [json.loads(json.dumps(config))], E)
        assert again.created == [] and again.skipped == [job]


@pytest.mark.skipif(build_index is None, reason="dbdict_fs.index not written yet")
@settings(PROFILE)
@given(config=configs)
def test_create_round_trips_through_the_index(config):
    with Scratch() as base:
        job = create_jobs(os.path.join(base, "tree"), [config], E).created[0]
        rows = build_index(os.path.join(base, "tree"), cache=False).select()
        assert len(rows) == 1
        row = rows[0]
        assert row["dbdict.status"] == "ready" and row["dbdict.path"] == job
        for key, expected in flat(config).items():
            got = row[key]
            if isinstance(expected, list):
                got = json.loads(got)
            elif isinstance(expected, int) and not isinstance(expected, bool) and not -2 ** 63 <= expected < 2 ** 63:
                got = int(got)  # SQLite integers are 64-bit: bigger ones are kept as text
            elif isinstance(expected, bool):
                got = bool(got) if got in (0, 1) else got
            if expected == 0.0 and isinstance(expected, float):
                expected = 0.0  # SQLite stores -0.0 as 0.0: equal in every comparison, sign lost
            assert same(got, expected), (key, got, expected)


# ---------------------------------------------------------------- damaged files

def _yaml_ish():
    fragments = st.sampled_from(["dbdict:", " status: ready", "epoch: 0", "{", "}", "[", "]", "- ",
                                 "&a", "*a", "!!python/object/apply:os.system ['true']", "!!binary AAAA",
                                 "? ", ": ", "\n", "  ", "'", '"', "---", "...", "%YAML 1.1", "<<: *a",
                                 "priority: .inf", "attempts: 1e400", "hash: !!int 3", "\t", "\x00"])
    return st.lists(fragments, max_size=40).map("".join)


mutations = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=64))),
    st.tuples(st.just("random-bytes"), st.binary(max_size=512)),
    st.tuples(st.just("yaml"), _yaml_ish()),
    st.tuples(st.just("json"), values.map(lambda v: json.dumps(v))),
    st.tuples(st.just("book"), st.tuples(st.sampled_from(["status", "priority", "epoch", "requeue_epoch",
                                                          "attempts", "experiment", "hash"]), scalars)),
)


def mutate(path, mutation):
    kind, arg = mutation
    with open(path, "rb") as f:
        data = f.read()
    if kind == "truncate":
        data = data[: int(len(data) * arg)]
    elif kind == "flip":
        data = bytearray(data)
        for where, mask in arg:
            if data:
                data[min(int(len(data) * where), len(data) - 1)] ^= mask
        data = bytes(data)
    elif kind == "insert":
        where, garbage = arg
        i = int(len(data) * where)
        data = data[:i] + garbage + data[i:]
    elif kind == "random-bytes":
        data = arg
    elif kind in ("yaml", "json"):
        data = arg.encode("utf-8", "surrogatepass")
    elif kind == "book":
        state = yaml.safe_load(data)  # the config is YAML, the state JSON
        state["dbdict"][arg[0]] = arg[1]
        data = json.dumps(state).encode("utf-8", "surrogatepass")
    os.unlink(path)  # state files are replaced, never rewritten in place
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    tree = tmp_path_factory.mktemp("fuzz-template") / "tree"
    create_jobs(tree, [{"x": 1, "model": {"arch": "mlp", "depth": 2}}, {"x": 2}], E)
    return str(tree)


@settings(PROFILE)
@given(target=st.sampled_from([jd.CONFIG, "state.0.yaml"]), mutation=mutations)
def test_a_damaged_file_never_crashes_the_readers_or_the_index(template, target, mutation):
    with Scratch() as base:
        tree = os.path.join(base, "tree")
        shutil.copytree(template, tree, symlinks=True)
        victim, other = sorted(jd.iter_jobdirs(tree))
        mutate(os.path.join(victim, target), mutation)

        try:
            jd.read_latest_state(victim)
            state_ok = True
        except DbdictError:
            state_ok = False
        try:
            jd.read_config(victim)
        except DbdictError:
            pass
        if build_index is None:
            return
        rows = {r["dbdict.path"]: r for r in build_index(tree, cache=False).select()}
        assert set(rows) == {victim, other}
        assert rows[other]["dbdict.status"] == "ready"
        # the index and the readers agree on whether that job is corrupt
        assert (rows[victim]["dbdict.status"] == "corrupt") == (not state_ok), rows[victim]
        if not state_ok:
            assert rows[victim].get("dbdict.error")


@settings(PROFILE)
@given(text=st.text(max_size=200) | _yaml_ish())
def test_parse_text_raises_only_corrupt_job(text):
    try:
        jd.parse_text(text, "fuzz")
    except DbdictError:
        pass


def test_profiles_are_bounded_by_default():
    assert PROFILE.max_examples <= 100 or os.environ.get("HYPOTHESIS_PROFILE") == "long"
    random.seed(0)

"""Creating jobs: one directory per distinct config, written atomically (DESIGN.md 1 and 2).

Every config is validated before anything is written, so a bad value or a generator that
raises leaves the tree as it was. Each job is built in a dot directory inside the tree and
renamed into place: a job directory is either complete or absent.
"""

import datetime
import math
import os
import re
import shutil
from dataclasses import dataclass, field

from . import jobdir as jd
from . import trees
from .discovery import creating_in, forget_final, hint
from .errors import DbdictError, UsageError
from .experiment import check_keys as check_key_names
from .experiment import declared_defaults, resolve_experiment
from .values import check_config, config_hash

DEFAULT_PRIORITY = 1.0
NAME_MAX = 255  # bytes in one path component on every filesystem we target
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


@dataclass
class CreateResult:
    """Paths of the jobs created, and of the existing jobs a duplicate config matched."""

    created: list = field(default_factory=list)
    skipped: list = field(default_factory=list)


def load_source(source):
    """A job SOURCE (FILE.py:ATTR or MOD:ATTR, a generator function or an iterable) ->
    (its configs, the EXPERIMENT its module declares or None)."""
    import sys

    from .experiment import load_experiment

    try:
        generator = load_experiment(source)
    except DbdictError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code: report, do not crash
        raise UsageError(f"cannot load the job source {source!r}: {type(exc).__name__}: {exc}") from None
    module = sys.modules.get(getattr(generator, "__module__", ""), None)
    experiment = getattr(module, "EXPERIMENT", None)
    if callable(generator):
        try:
            generator = generator()
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"the job source {source!r} raised {type(exc).__name__}: {exc}") from None
    if isinstance(generator, (str, bytes, dict)) or not hasattr(generator, "__iter__"):
        raise UsageError(f"the job source {source!r} gave a {type(generator).__name__}, "
                         f"not an iterable of dicts (a list, or a generator that yields dicts)")
    return generator, experiment


def compose(generator, grid):
    """The configs of `dbdict create`: each dict of `generator` (None: one empty dict)
    deep-merged with each config of the grid arguments `grid` (['lr={0.1,0.01}', ...]).
    Configs are validated (numpy values converted) before the grid is merged in."""
    from .values import merge, parse_grid

    grid_configs = parse_grid(grid)
    if generator is None:
        if not grid:
            raise UsageError("create: no keys at all: give key=VALUES grid arguments or a job SOURCE")
        return iter(grid_configs)

    def configs():
        for i, base in enumerate(generator):
            if not isinstance(base, dict):
                yield base  # _plan says it is not a dict
                continue
            base = check_config(base, where=f"config #{i}")
            for extra in grid_configs:
                yield merge(base, extra)
    return configs()


TREE_MARKER = jd.META_DIR  # a directory: what makes an empty directory a tree (slurm/, hints/ live in it)


def mark_tree(tree):
    """Make `tree` a tree even before it holds a job (`status`/`query` then say 0 jobs)."""
    path = os.path.join(tree, TREE_MARKER)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise DbdictError(f"cannot create {path}: {exc.strerror or exc}") from exc


def check_tree(tree, has_jobs):
    """Refuse a directory that is not a tree: no job in it (`has_jobs` false) and no
    marker that `create` made it. Costs one stat, and only when no job was found."""
    if not has_jobs and not os.path.isdir(os.path.join(os.fspath(tree), TREE_MARKER)):
        raise UsageError(f"{os.fspath(tree)}: not a dbdict tree (it holds no job; "
                         f"make one with `dbdict create {os.fspath(tree)} ...`)")


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_jobs(tree, generator, experiment, *, name=None, priority=DEFAULT_PRIORITY,
                dry_run=False, duplicates="skip", cwd=None, check_keys=True, progress=None, marker=True):
    """Write one job directory per distinct config of `generator` (an iterable of dicts).

    `experiment` is "module:attr" or "path/file.py:attr" (resolved now, recorded in the
    config). `name` is an optional template such as "{model.arch}/lr{lr}_s{seed}";
    by default a job lives at TREE/<hash[:2]>/<hash>. `duplicates="add"` adds a repeated
    config under a new name instead of skipping it. A class experiment that declares
    `defaults` rejects configs with keys it does not know (`check_keys=False` skips that).
    `progress(n_done, n_total)` is called as jobs are written. `marker` writes TREE/.dbdict/,
    so the tree is a tree even while it holds no job.
    """
    if duplicates not in ("skip", "add"):
        raise UsageError(f"duplicates must be 'skip' or 'add', not {duplicates!r}")
    if isinstance(priority, bool) or not isinstance(priority, (int, float)) or not math.isfinite(priority):
        raise UsageError(f"priority must be a finite number, not {priority!r}")
    if not isinstance(tree, (str, os.PathLike)):
        raise UsageError(f"tree must be a path, not {tree!r}")
    if name is not None and not isinstance(name, str):
        raise UsageError(f"name must be a template string such as 'lr{{lr}}', not {name!r}")
    tree = trees.resolve(tree)
    if os.path.exists(tree) and not os.path.isdir(tree):
        raise UsageError(f"{tree}: exists and is not a directory")
    if os.path.isfile(jd.JobPaths(tree).config):
        raise UsageError(f"{tree}: is a job directory, not a tree")
    experiment, pythonpath = resolve_experiment(experiment, cwd)
    if isinstance(generator, dict):
        raise UsageError("create_jobs takes an iterable of dicts, not one dict (wrap it in a list)")
    jobs = _plan(tree, generator, experiment, name, duplicates)
    if check_keys:
        defaults = declared_defaults(experiment, pythonpath)
        if defaults:
            for rel, config, _ in jobs:
                check_key_names(config, defaults, where=f"config {rel}")
    result = CreateResult()
    existing_hashes = _hashes_in_tree(tree) if name and duplicates == "skip" else None
    if name:
        _check_names(tree, jobs, existing_hashes)
    if marker and not dry_run:
        mark_tree(tree)
    try:
        _write_jobs(tree, jobs, result, experiment, pythonpath, priority, dry_run, existing_hashes, progress)
    except KeyboardInterrupt:
        from .errors import Interrupted

        exc = Interrupted(f"interrupted by Ctrl-C after writing {len(result.created)} of {len(jobs)} jobs "
                          f"(run the same create again to add the rest: duplicates are skipped)")
        exc.result = result
        raise exc from None
    return result


def _write_jobs(tree, jobs, result, experiment, pythonpath, priority, dry_run, existing_hashes, progress):
    # Directories a walk marked final get live markers *before* the first job this call puts
    # in them (dbdict_fs/discovery.py): a create ended by a signal, which runs no `finally`,
    # must leave no job of its own hidden. Each directory's own `.live..create.*` marker goes
    # once the call ends; a killed call leaves it, which costs walks a look of that directory.
    creating = {}  # directory -> its `.live..create.<token>` marker
    try:
        _write_each(tree, jobs, result, experiment, pythonpath, priority, dry_run, existing_hashes, progress,
                    creating)
    finally:
        for marker in creating.values():
            try:
                os.unlink(marker)
            except OSError:
                pass


def _write_each(tree, jobs, result, experiment, pythonpath, priority, dry_run, existing_hashes, progress,
                creating):
    token = "c" + jd.unique_suffix().replace(".", "")

    def before_placing(directory):
        if directory not in creating:
            creating[directory] = creating_in(directory, tree, token)

    for done, (rel, config, digest) in enumerate(jobs):
        if progress is not None:
            progress(done, len(jobs))
        path = os.path.join(tree, rel)
        if existing_hashes is not None and digest in existing_hashes:
            result.skipped.append(existing_hashes[digest])
            continue
        if dry_run:
            (result.skipped if os.path.exists(path) else result.created).append(path)
            continue
        os.makedirs(tree, exist_ok=True)
        if not _write_job(tree, rel, config, experiment, pythonpath, digest, priority,
                          placed=lambda: result.created.append(path), before_placing=before_placing):
            result.skipped.append(path)


def _check_names(tree, jobs, existing_hashes):
    """Before anything is written: a named job may not land on another job's directory,
    nor inside another job (planned or existing)."""
    planned = {rel for rel, _, _ in jobs}
    for rel, _, digest in jobs:
        if existing_hashes is not None and digest in existing_hashes:
            continue  # a duplicate: skipped, wherever it is
        target = os.path.join(tree, rel)
        if os.path.exists(jd.JobPaths(target).config):
            try:
                other = jd.read_config(target)["dbdict"].get("hash")
            except DbdictError:
                other = None
            if other != digest:
                raise UsageError(f"{target} already holds a different job: add a key to --name "
                                 f"(nothing was written)")
        parts = rel.split(os.sep)
        for i in range(1, len(parts)):
            above = os.sep.join(parts[:i])
            if above in planned:
                raise UsageError(f"{target} would be inside the job {os.path.join(tree, above)} "
                                 f"(nothing was written)")
        _check_no_job_above(tree, rel)


def _plan(tree, generator, experiment, template, duplicates):
    """Validate every config and choose its directory before anything is written."""
    planned, seen_hash, seen_rel = [], set(), {}
    try:
        iterator = iter(generator)
    except TypeError:
        raise UsageError(f"the job source is a {type(generator).__name__}, not an iterable of dicts") from None
    index = 0
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            break
        except DbdictError:
            raise
        except Exception as exc:
            raise UsageError(f"the job generator raised {type(exc).__name__}: {exc} "
                             f"(after {index} configs; nothing was written)") from exc
        config = check_config(item, where=f"config #{index}")
        index += 1
        digest = config_hash(config, experiment)
        if digest in seen_hash and duplicates == "skip":
            continue
        seen_hash.add(digest)
        rel = render_name(template, config) if template else os.path.join(digest[:2], digest)
        if duplicates == "add" and rel not in seen_rel and os.path.exists(os.path.join(tree, rel)):
            rel = _free_name(tree, rel, seen_rel)  # the same config is in the tree: add another
        elif rel in seen_rel:
            if duplicates == "add" or seen_rel[rel] == digest:
                rel = _free_name(tree, rel, seen_rel)
            else:
                raise UsageError(f"the name template gives {rel!r} to two different configs "
                                 f"(#{index - 1} and an earlier one): add a key to --name")
        seen_rel[rel] = digest
        planned.append((rel, config, digest))
    return planned


def _free_name(tree, rel, taken):
    n = 2
    while f"{rel}-{n}" in taken or os.path.exists(os.path.join(tree, f"{rel}-{n}")):
        n += 1
    return f"{rel}-{n}"


def render_name(template, config):
    """Fill a name template from (dotted) config keys; the result must stay inside the tree."""
    def lookup(match):
        node = config
        for part in match.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                raise UsageError(f"name template {template!r}: the config has no key {match.group(1)!r}")
            node = node[part]
        return str(node)

    rel = _FIELD.sub(lookup, template)
    parts = rel.split("/")
    if (rel.startswith("/") or "\0" in rel or "\\" in rel
            or any(p in ("", ".", "..") or p.startswith(".") for p in parts)):
        raise UsageError(f"name template {template!r} gives {rel!r}, which is not a relative path "
                         f"inside the tree (no '..', no leading '/' or '.', no empty parts)")
    long = [p for p in parts if len(p.encode("utf-8", "surrogateescape")) > NAME_MAX]
    if long:
        raise UsageError(f"name template {template!r} gives a path part too long for a file name "
                         f"({len(long[0].encode())} bytes, at most {NAME_MAX}): {long[0][:40]}...")
    return os.path.join(*parts)


def _hashes_in_tree(tree):
    """hash -> path of every job already in the tree (only needed for named layouts)."""
    found = {}
    if not os.path.isdir(tree):
        return found
    for path in jd.iter_jobdirs(tree):
        try:
            digest = jd.read_config(path)["dbdict"].get("hash")
        except DbdictError:
            continue
        if isinstance(digest, str):
            found.setdefault(digest, path)
    return found


def config_text(config, book):
    """config.yaml: block-style YAML for people, the reserved `dbdict` block first."""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    head = yaml.dump({"dbdict": book}, Dumper=dumper, default_flow_style=False, sort_keys=False,
                     allow_unicode=True)
    body = yaml.dump(config, Dumper=dumper, default_flow_style=False, sort_keys=False,
                     allow_unicode=True) if config else ""
    return head + body


def initial_state(config, book, priority):
    state = dict(config)
    state["dbdict"] = dict(book, status="ready", priority=float(priority), epoch=0,
                           requeue_epoch=0, attempts=0, workdir=jd.workdir_name(0))
    return state


def _write_job(tree, rel, config, experiment, pythonpath, digest, priority, placed=None, extra_book=None,
               before_rename=None, before_placing=None):
    """Build the job in a dot directory, then rename it into place (then `placed()`, so a
    Ctrl-C after the rename still counts the job). False if it exists. `extra_book`: more
    bookkeeping for the first state (a search's trial: `search`, `trial`);
    `before_placing(directory)` runs before the rename (create's markers);
    `before_rename()` may raise to abandon the job (a search's taker that lost its trial
    number)."""
    target = os.path.join(tree, rel)
    if os.path.exists(target):
        return False
    _check_no_job_above(tree, rel)
    _check_inside(tree, target)
    book = {"experiment": experiment}
    if pythonpath:
        book["pythonpath"] = list(pythonpath)
    book.update(hash=digest, created=utc_now())
    tmp = os.path.join(tree, f"{jd.TMP_PREFIX}create.{digest}.{jd.unique_suffix()}")
    try:
        os.mkdir(tmp)
        paths = jd.JobPaths(tmp)
        os.mkdir(paths.attempt_workdir(0))  # the per-attempt layout (DESIGN.md 5.1) from the start
        os.symlink(jd.workdir_name(0), paths.workdir)
        for name in (paths.stdout, paths.stderr):
            open(name, "wb").close()
        jd.atomic_write(paths.config, config_text(config, book).encode("utf-8"), fsync=False)
        state = initial_state(config, book, priority)
        state["dbdict"].update(extra_book or {})
        jd.atomic_write(paths.state(0), jd.dump_state(state), fsync=True)
        os.symlink(jd.state_name(0), paths.state_link)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # A job deleted by hand and created again must not stay hidden behind the old one's
        # final mark (a mark of a name that holds no job is nobody's), nor behind the marks
        # of the directories above it: both undone before the job appears.
        forget_final(target)
        if before_placing is not None:
            before_placing(os.path.dirname(target))
        if before_rename is not None:
            before_rename()
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if os.path.exists(jd.JobPaths(target).config):
                return False  # another process created the same job meanwhile
            raise DbdictError(f"cannot create {target}: {exc.strerror or exc}") from exc
        if placed is not None:
            placed()
        hint(target, priority, 0, tree)
        jd.fsync_dir(os.path.dirname(target))
        return True
    except OSError as exc:
        raise DbdictError(f"cannot create {target}: {exc.strerror or exc}") from exc
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _check_inside(tree, target):
    """A symlinked directory in the tree must not carry a job outside it."""
    real_tree = os.path.realpath(tree)
    parent = os.path.realpath(os.path.dirname(target))
    if parent != real_tree and not parent.startswith(real_tree + os.sep):
        raise UsageError(f"{target} would be outside the tree (through a symlink to {parent})")


def _check_no_job_above(tree, rel):
    """A job may not be created inside another job's directory."""
    parts = rel.split(os.sep)[:-1]
    for i in range(1, len(parts) + 1):
        if os.path.isfile(jd.JobPaths(os.path.join(tree, *parts[:i])).config):
            raise UsageError(f"{os.path.join(tree, rel)} would be inside the job {os.path.join(tree, *parts[:i])}")

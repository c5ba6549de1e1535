"""Which tree a command works on, and which tree a job belongs to (DESIGN.md 1, rev 4).

The path a person names for a tree (a symlink, a relative path, a trailing slash) is resolved
once, at the start of the command (`resolve`); every walk, marker and hint of that command is
relative to the result, and links met inside the tree are never followed (the walks open each
directory with O_NOFOLLOW). Which tree a job belongs to is decided here and nowhere else
(`tree_of`): the tree the command named, never a search upwards for `.dbdict/` -- a tree may
sit inside another tree and a job at any depth, and two answers (the walk's root, the nearest
`.dbdict/`) left a requeue's live markers short of the directory a walk had marked final.
"""

import os

_named = []  # the trees the commands of this process named, resolved (one for a CLI command)


def resolve(path):
    """The tree a command was given, as every walk, marker and hint of the command sees it:
    the real path (symlinks, `..`, relative paths and trailing slashes resolved), once."""
    path = os.fspath(path)
    if path in _named:  # resolved already by this command: no more calls on the tree's path
        return path
    tree = os.path.realpath(path)
    if tree not in _named:
        _named.append(tree)
    return tree


def inside(path, tree):
    """Whether `path` is `tree` or below it (both resolved, as `resolve` returns them)."""
    return path == tree or path.startswith(tree.rstrip(os.sep) + os.sep)


def tree_of(jobdir):
    """The tree a job belongs to for this process: the outermost tree a command of this
    process named that holds the job (its walks see every marker below it). A command that
    names no tree above the job (`dbdict run JOBDIR`, `dbdict requeue JOBDIR`) has the tree
    of the default layout TREE/<h[:2]>/<h> when that directory is a tree (holds `.dbdict/`),
    else none (its markers then stop at the job: name the tree, with a filter, instead)."""
    from . import jobdir as jd

    jobdir = os.path.abspath(os.fspath(jobdir))
    holding = [t for t in _named if t != jobdir and inside(jobdir, t)]
    if holding:
        return min(holding, key=len)
    parent, name = os.path.split(jobdir)
    if len(name) > 2 and os.path.basename(parent) == name[:2]:
        tree = os.path.dirname(parent)
        if os.path.isdir(os.path.join(tree, jd.META_DIR)):
            return tree
    return None

"""What starting an attempt costs under the fenced workdir (DESIGN 5.1 rev 4): a steal from a
possibly-live holder builds a byte copy (workdir.copy_tree: a reflink where the filesystem
offers one, else copy_file_range), measured against the hard-link copy of revision 3 (which
shared inodes with the old attempt: `torch.save` rewrote them in place) in the same run; a
clean resume reuses the directory (O(1)).

    .venv/bin/python bench/fence.py [--files 1000] [--gib 1.0]
"""

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from dbdict_fs import workdir  # noqa: E402


def hard_link_copy(src, dst):
    """Revision 3's steal copy (mkdir per directory, os.link per file), kept here to compare."""
    os.mkdir(dst)
    for top, dirs, files in os.walk(src):
        out = os.path.join(dst, os.path.relpath(top, src))
        for d in dirs:
            os.makedirs(os.path.join(out, d), exist_ok=True)
        for f in files:
            os.link(os.path.join(top, f), os.path.join(out, f))


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def case(tmp, name, files, size):
    src = os.path.join(tmp, f"{name}-src")
    os.makedirs(src)
    chunk = os.urandom(min(size, 1 << 20))
    for i in range(files):
        with open(os.path.join(src, f"f{i:05d}"), "wb") as f:
            left = size
            while left > 0:
                f.write(chunk[:left])
                left -= len(chunk)
    os.sync()  # the source's dirty pages are not the copy's cost
    link = timed(lambda: hard_link_copy(src, os.path.join(tmp, f"{name}-link")))
    copy = timed(lambda: workdir.copy_tree(src, os.path.join(tmp, f"{name}-copy")))
    moved = os.path.join(tmp, f"{name}-moved")
    resume = timed(lambda: os.rename(src, moved))  # what a clean resume costs at most (it reuses in place)
    return link, copy, resume


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000, help="files in the many-files workdir")
    ap.add_argument("--gib", type=float, default=1.0, help="size of the one-big-file workdir (GiB)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        rows = [(f"{args.files} files of 4 KiB", *case(tmp, "many", args.files, 4096)),
                (f"1 file of {args.gib:g} GiB", *case(tmp, "big", 1, int(args.gib * (1 << 30))))]
    print(f"{'workdir':24} {'rev 3 links':>12} {'rev 4 copy':>11} {'copy/links':>11} {'resume':>9}")
    for name, link, copy, resume in rows:
        print(f"{name:24} {link:11.4f}s {copy:10.4f}s {copy / link:10.1f}x {resume:8.6f}s")


if __name__ == "__main__":
    main()

"""Every shell and Python block of README.md runs, in order, in a scratch copy of the project.

A block that cannot run here (it needs SLURM, or would run this suite) is marked by an HTML
comment on the line before it: `<!-- readme-test: skip (reason) -->`. Only a few may be.
"""

import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b(.*?)-->")
MAX_SKIPPED = 3
BLOCK_TIMEOUT = 120


def readme_blocks(path=README):
    """[(line number, language, code, skip reason or None)] of every fenced block."""
    lines = open(path, encoding="utf-8").read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i + 1, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        previous = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.search(previous)
        blocks.append((start, lang, "\n".join(lines[i + 1:j]) + "\n",
                       skip.group(1).strip(" ()") or "marked" if skip else None))
        i = j + 1
    return blocks


def test_the_block_parser_sees_marks_and_languages(tmp_path):
    doc = tmp_path / "r.md"
    doc.write_text("t\n\n<!-- readme-test: skip (needs SLURM) -->\n```bash\nsbatch x\n```\n"
                   "```python\nprint(1)\n```\n")
    assert readme_blocks(str(doc)) == [(4, "bash", "sbatch x\n", "needs SLURM"), (7, "python", "print(1)\n", None)]


def test_every_readme_block_runs(tmp_path):
    blocks = readme_blocks()
    runnable = [b for b in blocks if b[1] in ("bash", "sh", "shell", "python") and b[3] is None]
    skipped = [b for b in blocks if b[3] is not None]
    assert len(skipped) <= MAX_SKIPPED, f"too many README blocks skipped: {[(b[0], b[3]) for b in skipped]}"
    assert len(runnable) >= 4, "the README's runnable blocks were not found"
    assert all(b[1] in ("bash", "sh", "shell", "python") for b in blocks if b[3] is None), \
        "a README block has no language: say ```bash or ```python (or mark it skipped)"

    work = tmp_path / "project"
    work.mkdir()
    shutil.copytree(os.path.join(ROOT, "examples"), work / "examples")
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
               DBDICT_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=ROOT)
    for line, lang, code, _ in runnable:
        if lang == "python":
            argv = [sys.executable, "-c", code]
        else:
            argv = ["bash", "-c", "set -euo pipefail\n" + code]
        try:
            proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True,
                                  timeout=BLOCK_TIMEOUT, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"README.md:{line}: the {lang} block ran over {BLOCK_TIMEOUT} s\n"
                                 f"{exc.stdout}\n{exc.stderr}") from None
        assert proc.returncode == 0, (f"README.md:{line}: the {lang} block exited {proc.returncode}\n"
                                      f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
        assert "Traceback" not in proc.stderr, f"README.md:{line}: a traceback\n{proc.stderr}"

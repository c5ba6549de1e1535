"""`dbdict plot`: PNG and SVG outputs with the expected series, with and without matplotlib."""

import os
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from dbdict_fs import create_jobs

from conftest import HERE, run_cli

EXPS = os.path.join(HERE, "experiments", "history_exps.py")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tree = tmp_path_factory.mktemp("plot") / "tree"
    configs = [{"lr": lr, "arch": arch, "seed": seed, "steps": 5}
               for lr in (0.1, 0.01, 0.001) for arch in ("a", "b") for seed in (1, 2)]
    create_jobs(tree, configs, f"{EXPS}:quick")
    out = run_cli("work", tree, "-q", timeout=300)
    assert out.returncode == 0, out.stderr
    return tree


def svg_series(path):
    root = ET.parse(path).getroot()  # also: the SVG is well-formed XML
    ids = [el.get("id") for el in root.iter() if el.get("id")]
    return sorted(i for i in ids if i.startswith("series-")), sorted(i for i in ids if i.startswith("band-"))


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.mark.skipif(not __import__("importlib").util.find_spec("matplotlib"), reason="needs matplotlib")
def test_metric_vs_parameter_one_series_per_group(sweep, tmp_path):
    svg = tmp_path / "lr.svg"
    out = run_cli("plot", sweep, "--x", "lr", "--y", "valid_err", "--by", "arch", "--logx", "-o", svg)
    assert out.returncode == 0, out.stderr
    assert "2 series, 12 points" in out.stderr
    series, bands = svg_series(svg)
    assert series == ["series-0", "series-1"] and bands == []
    # mean and spread over seeds: one point per lr, a band per series
    out = run_cli("plot", sweep, "--x", "lr", "--y", "valid_err", "--by", "arch", "--over", "seed", "-o", svg)
    assert "2 series, 6 points" in out.stderr, out.stderr
    assert svg_series(svg) == (["series-0", "series-1"], ["band-0", "band-1"])
    # filters as for query
    out = run_cli("plot", sweep, "arch=a", "--where", "lr > 0.005", "--x", "lr", "--y", "valid_err", "-o", svg)
    assert "1 series, 4 points" in out.stderr, out.stderr
    png = tmp_path / "lr.png"
    out = run_cli("plot", sweep, "--x", "lr", "--y", "valid_err", "--by", "arch", "-o", png)
    assert out.returncode == 0 and png_size(png) == (700, 450)


@pytest.mark.skipif(not __import__("importlib").util.find_spec("matplotlib"), reason="needs matplotlib")
def test_learning_curves_from_histories(sweep, tmp_path):
    svg = tmp_path / "c.svg"
    out = run_cli("plot", sweep, "--curve", "valid_err", "--by", "lr", "-o", svg)
    assert out.returncode == 0, out.stderr
    assert "3 series, 15 points" in out.stderr  # 3 lrs x 5 steps, averaged over arch and seed
    assert svg_series(svg)[0] == ["series-0", "series-1", "series-2"]
    out = run_cli("plot", sweep, "--curve", "loss", "arch=b", "seed=1", "-o", svg)
    assert "3 series, 15 points" in out.stderr, out.stderr  # one per job
    out = run_cli("plot", sweep, "--curve", "nothing", "-o", svg)
    assert out.returncode == 2 and "no matching job logged 'nothing'" in out.stderr


def test_bad_options_one_line(sweep, tmp_path):
    for args in (["--x", "lr", "-o", tmp_path / "a.svg"], ["--x", "lr", "--y", "valid_err", "-o", tmp_path / "a.gif"],
                 ["--x", "nokey", "--y", "valid_err", "-o", tmp_path / "a.svg"]):
        out = run_cli("plot", sweep, *args)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_without_matplotlib_one_line_telling_how_to_install(sweep, tmp_path):
    """A real process in which `import matplotlib` fails, like an install without the extra."""
    hide = tmp_path / "hide"
    (hide / "matplotlib").mkdir(parents=True)
    (hide / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")]))
    probe = subprocess.run([sys.executable, "-c", "import matplotlib"], env=env, capture_output=True)
    assert probe.returncode != 0
    out = run_cli("plot", sweep, "--x", "lr", "--y", "valid_err", "-o", tmp_path / "x.png", env=env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["Error: dbdict plot needs matplotlib: pip install "
                                               "'dbdict_fs[plot]' (or pip install matplotlib)"]
    assert not (tmp_path / "x.png").exists()
    # the report needs no plotting library at all
    out = run_cli("report", sweep, "-o", tmp_path / "r.html", "--metric", "valid_err", env=env)
    assert out.returncode == 0, out.stderr


def test_query_startup_does_not_import_plotting(sweep):
    code = ("import sys, io, contextlib; from dbdict_fs.cli import main_query\n"
            "with contextlib.redirect_stdout(io.StringIO()): main_query([sys.argv[1], '--format', 'json'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib' or m in "
            "('dbdict_fs.plot', 'dbdict_fs.report', 'dbdict_fs.histories')))")
    out = subprocess.run([sys.executable, "-c", code, str(sweep)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

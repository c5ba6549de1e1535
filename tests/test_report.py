"""`dbdict report`: rendered in real headless chromium, checked as a person sees it: a row
per job, sorting by a click, each plot drawn with its series, no network, no console error."""

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

import browser
from dbdict_fs import create_jobs
from dbdict_fs import analysis
from dbdict_fs.analysis import Roles, configurations, importance, summary
from fake_jobs import write_job

from conftest import HERE, run_cli, wait_for

EXPS = os.path.join(HERE, "experiments", "history_exps.py")
needs_browser = pytest.mark.skipif(not browser.available(), reason="needs chromium and chromedriver")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """What a person sweeps: a number (lr), a category (arch), a seed, an id per job, two keys
    that never change (steps, width); lr=0.1 diverges (NaN) on vgg and fails on resnet seed 2."""
    tree = tmp_path_factory.mktemp("report") / "tree"
    configs = [{"lr": lr, "arch": arch, "seed": seed, "run_id": f"run-{i}", "steps": 5, "width": 4,
                "fail_when": {"lr": 0.1, "arch": "resnet", "seed": 2}, "nan_when": {"lr": 0.1, "arch": "vgg"}}
               for i, (lr, arch, seed) in enumerate((lr, arch, seed) for lr in (0.1, 0.01, 0.001)
                                                     for arch in ("resnet", "vgg") for seed in (1, 2))]
    create_jobs(tree, configs, f"{EXPS}:quick")
    out = run_cli("work", tree, "-q", timeout=300)
    assert out.returncode == 0, out.stderr  # one job fails on purpose: the worker goes on
    return tree


@pytest.fixture(scope="module")
def chrome():
    if not browser.available():
        pytest.skip("needs chromium and chromedriver")
    with browser.Browser() as b:
        yield b


def write_report(tree, path, *args):
    out = run_cli("report", tree, "-o", path, *args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(path)
    return "file://" + str(path)


def column(chrome, name):
    heads = chrome.js("return Array.from(document.querySelectorAll('#alljobs th')).map(function(h){"
                      "return h.textContent})")
    i = heads.index(name.replace("dbdict.", ""))  # the header shows the name without a sort arrow
    return chrome.js(f"return Array.from(document.querySelectorAll('#alljobs tbody tr'))"
                     f".map(function(tr){{return tr.children[{i}].textContent}})"), i


# where a plot's point i is on the screen (after scrolling it into view), and what it stands for
POINT = """var f=document.querySelector(arguments[0]);f.scrollIntoView({block:'center'});
var s=f.querySelector('svg'),r=s.getBoundingClientRect(),vb=s.viewBox.baseVal,p=f._pts[arguments[1]];
return [r.left+p[0]*r.width/vb.width, r.top+p[1]*r.height/vb.height, p[3]()];"""
# where, on the screen, SVG coordinates (x, y) of a figure's plot are
AT = """var s=document.querySelector(arguments[0]+' svg'),r=s.getBoundingClientRect(),vb=s.viewBox.baseVal;
return [r.left+arguments[1]*r.width/vb.width, r.top+arguments[2]*r.height/vb.height];"""


def texts(chrome, css):
    return chrome.js("return Array.from(document.querySelectorAll(arguments[0])).map(function(e){"
                     "return e.textContent})", css)


@needs_browser
def test_report_as_a_person_sees_it(sweep, tmp_path, chrome):
    url = write_report(sweep, tmp_path / "sweep.html", "--metric", "valid_err", "--top", "4")
    chrome.resize(1200, 1600)
    chrome.console()  # drop entries of earlier pages
    chrome.get(url)
    assert len(chrome.find_all("#alljobs tbody tr")) == 12  # one row per job
    assert chrome.js("return document.getElementById('shown').textContent") == "12 of 12 jobs"
    text = chrome.js("return document.body.innerText")
    assert re.search(r"11\s+done", text) and re.search(r"1\s+failed", text)
    assert text.count("RuntimeError: diverged: loss is nan") == 1  # the failed job's last error line
    assert len(chrome.find_all("#best tbody tr")) == 4
    wide, window = chrome.js("return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert wide <= window <= 1200  # no sideways scroll at 1,200 px

    # a panel per parameter: lr numeric (log), arch with its two categories; seed, id, constants none
    assert sorted(texts(chrome, "figure[data-param] figcaption b")) == ["arch", "lr"]
    assert sorted(chrome.js("return Array.from(document.querySelectorAll('figure[data-param]')).map("
                            "function(f){return f.dataset.param})")) == ["arch", "lr"]
    assert texts(chrome, "figure[data-param=arch] text.cat") == ["resnet", "vgg"]
    assert len(chrome.find_all("figure[data-param=arch] g.box")) == 2
    assert "lr (log)" in texts(chrome, "figure[data-param=lr] text")
    header = chrome.js("return document.getElementById('constant').innerText")
    assert "steps=5" in header and "width=4" in header
    assert "seed" in chrome.js("return document.getElementById('replicates').innerText")
    assert "run_id" in chrome.js("return document.getElementById('ids').innerText")
    heads = texts(chrome, "#alljobs th")
    assert "steps" not in heads and "width" not in heads and "seed" in heads  # constants: header only

    # diverged runs: counted, drawn at the top edge, listed with their parameters
    assert chrome.js("return document.getElementById('diverged-count').innerText").split() == ["2", "diverged"]
    assert len(chrome.find_all("figure[data-param=lr] path.diverged")) == 1  # lr=0.1, vgg: both seeds
    listed = chrome.js("return Array.from(document.querySelectorAll('#diverged tbody tr')).map("
                       "function(tr){return tr.innerText})")
    assert len(listed) == 2 and all("vgg" in row and "0.1" in row and "nan" in row.lower() for row in listed), listed

    # learning curves are named by what differs between them, never by a hash
    labels = chrome.js("return Array.from(document.querySelectorAll('figure[data-plot=curves] g.series'))"
                       ".map(function(g){return g.dataset.label})")
    assert len(labels) == 4 and len(set(labels)) == 4
    assert all(dict(kv.split("=") for kv in label.split(", ")).keys() == {"lr", "arch"} for label in labels), labels

    # parameter importance: shares that sum to one
    shares = chrome.js("return Array.from(document.querySelectorAll('figure[data-plot=importance] .bar'))"
                       ".map(function(b){return [b.dataset.key, +b.dataset.share]})")
    assert sorted(k for k, _ in shares) == ["arch", "lr"] and abs(sum(v for _, v in shares) - 1) < 0.01

    # hover a point: its parameters and value; click it: its jobs' rows, highlighted and in view
    x, y, what = chrome.js(POINT, "figure[data-param=lr]", 0)
    chrome.mouse(("move", x, y))
    tip = wait_for(lambda: chrome.js("var t=document.getElementById('tip');"
                                     "return t.style.display==='block'&&t.textContent"), what="the hover text")
    assert tip == what and re.search(r"arch=\w+, lr=[0-9.]+", tip) and "valid_err = " in tip
    chrome.mouse(("move", x, y), ("down",), ("up",))
    rows = wait_for(lambda: chrome.js("return Array.from(document.querySelectorAll('#alljobs tr.hl')).map("
                                      "function(tr){var r=tr.getBoundingClientRect();"
                                      "return [tr.children[0].textContent, r.top>=0&&r.bottom<=innerHeight]})"),
                    what="highlighted rows")
    assert len(rows) == 2 and all(visible for _, visible in rows)  # the two seeds of that point
    assert tip.splitlines()[-1].split()[0] in [path for path, _ in rows]
    assert all(os.path.isdir(sweep / path) for path, _ in rows)  # the path is the job's directory

    # parallel coordinates: drag along the lr axis over 0.1 only, and the table keeps lr=0.1 jobs
    chrome.js("document.querySelector('figure[data-plot=parallel]').scrollIntoView({block:'center'})")
    axis = texts(chrome, "figure[data-plot=parallel] g.axis text[font-weight=bold]").index("lr")
    ax = chrome.js(f"return +document.querySelectorAll('figure[data-plot=parallel] g.axis line')[{axis}]"
                   ".getAttribute('x1')")
    start, end = (chrome.js(AT, "figure[data-plot=parallel]", ax, y) for y in (20, 100))
    chrome.mouse(("move", *start), ("down",), ("move", *end), ("up",))
    lrs, _ = wait_for(lambda: (lambda c: c if len(c[0]) < 12 else None)(column(chrome, "lr")), what="brushing")
    assert lrs and set(lrs) == {"0.1"}, lrs
    assert len(chrome.find_all("figure[data-plot=parallel] rect.brush")) == 1
    chrome.mouse(("move", *start), ("down",), ("up",))  # a click on the axis clears its range
    wait_for(lambda: len(chrome.find_all("#alljobs tbody tr")) == 12, what="the brush cleared")

    # sorting: click valid_err, ascending; click again, descending
    values, i = column(chrome, "valid_err")
    heads = chrome.find_all("#alljobs th")
    chrome.click(heads[i])
    values, _ = column(chrome, "valid_err")
    finite = [float(v) for v in values if v not in ("NaN", "")]
    assert finite == sorted(finite) and len(set(finite)) > 3
    chrome.click(heads[i])
    values, _ = column(chrome, "valid_err")
    finite = [float(v) for v in values if v not in ("NaN", "")]
    assert finite == sorted(finite, reverse=True)
    arch, j = column(chrome, "arch")
    chrome.click(chrome.find_all("#alljobs th")[j])
    assert column(chrome, "arch")[0] == sorted(arch)

    # nothing fetched from anywhere, nothing went wrong
    assert chrome.js("return performance.getEntriesByType('resource').length") == 0
    assert [e for e in chrome.console() if e.get("level") in ("SEVERE", "WARNING")] == []


@needs_browser
def test_the_checks_see_a_network_request_and_a_console_error(tmp_path, chrome):
    """The two 'nothing happened' checks above can fail: a page that fetches and throws."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><img src='http://127.0.0.1:9/x.png'>"
                    "<script>throw new Error('boom')</script></body></html>")
    chrome.console()
    chrome.get("file://" + str(page))
    assert chrome.js("return performance.getEntriesByType('resource').length") == 1
    assert any("boom" in e.get("message", "") for e in chrome.console())


def test_report_file_is_self_contained(sweep, tmp_path):
    path = tmp_path / "r.html"
    write_report(sweep, path, "--maximize", "--metric", "valid_err")
    text = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", text)  # no CDN, no remote anything
    assert "<script src" not in text and "<link" not in text
    assert "higher is better" in text


def test_bad_report_options(sweep, tmp_path):
    for args, msg in ((["-o", tmp_path / "r.txt"], "HTML"), (["-o", tmp_path / "r.html", "--metric", "nope"], "nope"),
                      (["-o", tmp_path / "r.html", "lr=5"], "no matching jobs")):
        out = run_cli("report", sweep, *args)
        assert out.returncode == 2 and msg in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


@needs_browser
def test_long_tables_show_a_page_but_sort_and_filter_every_job(sweep, tmp_path, chrome):
    chrome.get(write_report(sweep, tmp_path / "paged.html", "--metric", "valid_err", "--rows", "5"))
    assert len(chrome.find_all("#alljobs tbody tr")) == 5
    assert chrome.js("return document.getElementById('shown').textContent") == "first 5 of 12 of 12 jobs"
    values, i = column(chrome, "valid_err")
    chrome.click(chrome.find_all("#alljobs th")[i])
    values, _ = column(chrome, "valid_err")
    assert values == ["0.2102", "0.212", "0.2202", "0.222", "0.23"]  # the 5 lowest of all 12
    chrome.click(chrome.find_all("#more")[0])
    assert len(chrome.find_all("#alljobs tbody tr")) == 12
    assert chrome.js("return document.getElementById('more').style.display") == "none"


@needs_browser
def test_watch_rewrites_the_file_and_the_open_page_follows(sweep, tmp_path, chrome):
    """A job changes while the page is open: the page shows it without a reload by hand,
    keeping its filter and scroll; Ctrl-C ends the watch with one line."""
    tree = tmp_path / "tree"
    shutil.copytree(sweep, tree, symlinks=True)
    page = tmp_path / "live.html"
    code = "import sys; from dbdict_fs.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "report", str(tree), "-o", str(page), "--watch", "0.3",
                             "--metric", "valid_err"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(page.exists, timeout=60, what="the first report")
        chrome.resize(1200, 900)
        chrome.console()
        chrome.get("file://" + str(page))
        assert not chrome.find_all(".st-ready")
        chrome.js("var f=document.getElementById('filter');f.value='resnet';f.dispatchEvent(new Event('input'));"
                  "window.scrollTo(0, 400)")
        assert chrome.js("return document.getElementById('shown').textContent") == "6 of 12 jobs"
        out = run_cli("requeue", tree, "--status", "failed", "-q")  # the failed job is ready again
        assert out.returncode == 0, out.stderr
        ready = wait_for(lambda: chrome.js("var r=document.querySelector('.st-ready b');return r&&r.textContent"),
                         timeout=60, what="the page showing the requeued job")
        assert ready == "1"
        kept = chrome.js("return [document.getElementById('filter').value, "
                         "document.getElementById('shown').textContent, Math.round(scrollY)]")
        assert kept == ["resnet", "6 of 12 jobs", 400]  # the filter and the scroll survived the reload
        assert [e for e in chrome.console() if e.get("level") in ("SEVERE", "WARNING")] == []
        assert all(e["name"].startswith("file:") for e in
                   chrome.js("return performance.getEntriesByType('resource').map(function(e){return {name:e.name}})"))
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and len(err.strip().splitlines()) == 1 and "stopped watching" in err, err


def search_tree(tree):
    """A search as the search code leaves it: trials with `search`/`trial` bookkeeping, some
    pruned early (short histories), one diverged."""
    for trial in range(12):
        lr = 10 ** (-4 + 3 * ((trial * 7) % 12) / 11)
        status = "pruned" if trial % 4 == 3 else "done"
        steps = 2 if status == "pruned" else 6
        value = float("nan") if trial == 5 else 0.2 + abs(lr - 0.01) * 3 + 0.3 / steps
        history = [{"step": s, "valid_err": 0.2 + abs(lr - 0.01) * 3 + 0.3 / s} for s in range(1, steps + 1)]
        write_job(tree, {"lr": lr, "opt": ["sgd", "adam"][trial % 2], "epochs": 6}, {"valid_err": value},
                  status=status, book={"search": "s1", "trial": trial}, history=history)
    return tree


@needs_browser
def test_a_search_shows_its_best_so_far_and_its_pruned_trials(tmp_path, chrome):
    tree = search_tree(tmp_path / "tree")
    chrome.console()
    chrome.get(write_report(tree, tmp_path / "search.html", "--metric", "valid_err"))
    fig = "figure[data-plot=best-so-far][data-search=s1]"
    assert chrome.find_all(fig) and chrome.find_all(fig + " g.series[data-label='best so far']")
    legend = texts(chrome, fig + " text.legend")
    assert "3 pruned" in legend and "8 done" in legend and "1 diverged" in legend, legend
    assert chrome.js(f"return document.querySelector('{fig} path.pruned').getAttribute('d').split('M').length") == 4
    text = chrome.js("return document.body.innerText")
    assert re.search(r"3\s+pruned", text) and re.search(r"1\s+diverged", text)
    pruned = chrome.find_all("figure[data-plot=curves] g.series.pruned")
    assert len(pruned) == 3  # told apart in the curves too (dashed)
    assert sorted(texts(chrome, "figure[data-param] figcaption b")) == ["lr", "opt"]
    assert "trial" in texts(chrome, "#alljobs th") and "search" in texts(chrome, "#alljobs th")
    assert [e for e in chrome.console() if e.get("level") in ("SEVERE", "WARNING")] == []


def no_optuna(*args):
    raise ImportError("No module named 'optuna'")


@pytest.mark.parametrize("fanova", [False, True], ids=["estimate", "fanova"])
def test_roles_of_keys_and_importance(fanova, monkeypatch):
    if fanova:
        pytest.importorskip("optuna")
        pytest.importorskip("sklearn")
    else:
        monkeypatch.setattr(analysis, "_fanova", no_optuna)
    rows = [{"lr": lr, "arch": arch, "seed": seed, "data_seed": 1, "run": f"r{i}", "epochs": 5, "err": err}
            for i, (lr, arch, seed, err) in enumerate(
                (lr, arch, seed, lr * 10 + (arch == "b") + seed / 100)
                for lr in (0.1, 0.01, 0.001) for arch in "ab" for seed in (1, 2))]
    roles = Roles(rows, {"lr", "arch", "seed", "data_seed", "run", "epochs"}, "err", over=())
    assert roles.params == ["lr", "arch"] and roles.kind == {"lr": "num", "arch": "cat"}
    assert roles.replicates == ["seed"] and roles.ids == ["run"] and roles.results == ["err"]
    assert roles.constant == {"data_seed": 1, "epochs": 5}
    assert Roles(rows, {"lr", "arch", "seed"}, "err", over=("arch",)).replicates == ["arch", "seed"]
    groups = configurations(rows, roles.params)
    assert len(groups) == 6 and all(len(g) == 2 for g in groups)
    points = [({"lr": rows[g[0]]["lr"], "arch": rows[g[0]]["arch"]}, summary(rows, g, "err")[0]) for g in groups]
    method, shares = importance(points, roles.kind)
    assert method == ("fANOVA (optuna)" if fanova else "variance share per parameter")
    assert abs(sum(shares.values()) - 1) < 1e-9 and shares["arch"] > shares["lr"] > 0, (method, shares)


def test_over_names_a_key_of_the_jobs(sweep, tmp_path):
    out = run_cli("report", sweep, "-o", tmp_path / "r.html", "--over", "nope")
    assert out.returncode == 2 and "--over nope" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    write_report(sweep, tmp_path / "r.html", "--over", "arch")
    text = (tmp_path / "r.html").read_text()
    assert "data-param='arch'" not in text and "data-param='lr'" in text

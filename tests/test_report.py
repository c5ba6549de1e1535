"""`dbdict report`: rendered in real headless chromium, checked as a person sees it: a row
per job, sorting by a click, each plot drawn with its series, no network, no console error."""

import os
import re

import pytest

import browser
from dbdict_fs import create_jobs

from conftest import HERE, run_cli

EXPS = os.path.join(HERE, "experiments", "history_exps.py")
needs_browser = pytest.mark.skipif(not browser.available(), reason="needs chromium and chromedriver")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tree = tmp_path_factory.mktemp("report") / "tree"
    configs = [{"lr": lr, "arch": arch, "seed": seed, "steps": 5, "fail": lr == 0.1 and seed == 2}
               for lr in (0.1, 0.01, 0.001) for arch in ("a", "b") for seed in (1, 2)]
    create_jobs(tree, configs, f"{EXPS}:quick")
    out = run_cli("work", tree, "-q", timeout=300)
    assert out.returncode == 0, out.stderr  # two jobs fail on purpose: the worker goes on
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


@needs_browser
def test_report_as_a_person_sees_it(sweep, tmp_path, chrome):
    url = write_report(sweep, tmp_path / "sweep.html", "--metric", "valid_err", "--top", "4")
    chrome.console()  # drop entries of earlier pages
    chrome.get(url)
    assert len(chrome.find_all("#alljobs tbody tr")) == 12  # one row per job
    assert chrome.js("return document.getElementById('shown').textContent") == "12 of 12 jobs"
    text = chrome.js("return document.body.innerText")
    assert re.search(r"10\s+done", text) and re.search(r"2\s+failed", text)
    assert text.count("RuntimeError: diverged: loss is nan") == 2  # the failed jobs' last error line
    assert len(chrome.find_all("#best tbody tr")) == 4

    # sorting: click valid_err, ascending; click again, descending
    values, i = column(chrome, "valid_err")
    heads = chrome.find_all("#alljobs th")
    chrome.click(heads[i])
    values, _ = column(chrome, "valid_err")
    assert [float(v) for v in values] == sorted(float(v) for v in values) and len(set(values)) > 3
    chrome.click(heads[i])
    values, _ = column(chrome, "valid_err")
    assert [float(v) for v in values] == sorted((float(v) for v in values), reverse=True)
    arch, j = column(chrome, "arch")
    chrome.click(chrome.find_all("#alljobs th")[j])
    assert column(chrome, "arch")[0] == sorted(arch)

    # every plot is drawn: one mean series per numeric parameter, one curve per best job
    plots = chrome.js("return Array.from(document.querySelectorAll('figure.plot')).map(function(f){"
                      "return [f.dataset.name, f.querySelectorAll('g.series path').length,"
                      " f.querySelector('svg').getBoundingClientRect().width]})")
    assert sorted(p[0] for p in plots) == ["curves", "param-fail", "param-lr", "param-seed"]
    for name, series, width in plots:
        assert width > 100
        assert series == (4 if name == "curves" else 1), (name, series)

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

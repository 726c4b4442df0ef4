"""The rendered book in a real browser (headless Debian Chromium via Selenium), and proof that the check
fails when a figure, the math, a solution toggle, the scorecard or the search is broken.

Without Chromium these tests are skipped, unless PTM_REQUIRE_BROWSER is set (CI sets it), in which
case they fail: a missing browser must not pass silently.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from ptmlib.book.sitecheck import (browser_available, check_page, check_site, chromium, pages, search_finds, search_term,
                              serve)
from ptmlib.book.sphinx_ext import unique_scripts

pytestmark = pytest.mark.slow  # builds the book and drives Chromium
needs_browser = pytest.mark.skipif(not browser_available() and not os.environ.get("PTM_REQUIRE_BROWSER"),
                                   reason="needs Debian's chromium and chromium-driver and selenium")
CHAPTER = "chapters/icl/linear_regression.html"


@needs_browser
def test_every_page_of_the_book_passes_in_chromium(built_book, root):
    html, proc = built_book
    assert proc.returncode == 0, proc.stderr[-3000:]
    shots = html.parent / "screenshots"
    shutil.rmtree(shots, ignore_errors=True)
    report = check_site(html, screenshots=shots)
    assert {p.path: p.problems for p in report if p.problems} == {}
    chapters = [p for p in report if p.path.startswith("chapters/")]
    assert len(chapters) == len(list((root / "chapters").glob("*/*.md")))
    assert {p.path for p in report} >= {"intro.html", "syllabus.html", "report.html", "bibliography.html"}
    for page in chapters:  # the checks saw something on every chapter: they are not vacuous
        assert page.title and page.scorecard and page.formulas > 0 and page.figures > 0 and page.dropdowns > 0, page
        assert page.downloads == 2, page
    assert sum(p.formulas for p in report) > 500
    for name in ("chapters_icl_linear_regression.png", "report.png"):  # for a person to look at
        assert (shots / name).read_bytes()[:4] == b"\x89PNG" and (shots / name).stat().st_size > 50_000


@pytest.fixture(scope="module")
def driver():
    if not browser_available() and not os.environ.get("PTM_REQUIRE_BROWSER"):
        pytest.skip("needs Debian's chromium and chromium-driver and selenium")
    with chromium() as d:
        yield d


@pytest.fixture
def copy(built_book, tmp_path) -> Path:
    """A private copy of the built book, to break."""
    html, proc = built_book
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(shutil.copytree(html, tmp_path / "html"))


def _problems(site: Path, driver, path: str = CHAPTER, **kw) -> list[str]:
    with serve(site) as base:
        return check_page(driver, base, path, **kw).problems


def test_the_intact_copy_passes(copy, driver):
    assert _problems(copy, driver) == []


def test_a_missing_figure_fails(copy, driver):
    figure = re.search(r'<img[^>]*src="../../(_images/[^"]+)"', (copy / CHAPTER).read_text()).group(1)
    (copy / figure).unlink()
    problems = _problems(copy, driver)
    assert any(p.startswith("figure not loaded") and figure in p for p in problems), problems


def test_math_fails_without_the_served_mathjax(copy, driver):
    shutil.rmtree(copy / "_static" / "mathjax")  # what a reader offline saw with the CDN
    problems = _problems(copy, driver, math_timeout_ms=3000)
    assert "math: MathJax never loaded" in problems, problems
    assert any(p.startswith("math: raw TeX in the text") for p in problems), problems


def test_a_solution_open_by_default_fails(copy, driver):
    (copy / "_static" / "togglebutton.js").write_text("")  # no toggle: the solution shows at once
    problems = _problems(copy, driver)
    assert any("is open before a click" in p for p in problems), problems


def test_a_chapter_without_its_scorecard_fails(copy, driver):
    page = copy / CHAPTER
    page.write_text(page.read_text().replace('class="ptm-scorecard"', 'class="other"'))
    assert "no claims scorecard" in _problems(copy, driver)


def test_a_console_error_fails(copy, driver):
    page = copy / CHAPTER
    page.write_text(page.read_text().replace("</body>", "<script>undefinedFunction()</script></body>"))
    assert any(p.startswith("console error") and "undefinedFunction" in p for p in _problems(copy, driver))


def test_a_report_filter_that_does_not_filter_fails(copy, driver):
    page = copy / "report.html"
    page.write_text(page.read_text().replace('select.addEventListener("change", show);', ""))
    problems = _problems(copy, driver, "report.html")
    assert any(p.startswith("part filter 'I' shows") for p in problems), problems


def test_search_finds_a_page_by_a_word_of_its_title_and_not_by_nonsense(copy, driver):
    with serve(copy) as base:
        assert search_finds(driver, base, "regression", CHAPTER)
        assert not search_finds(driver, base, "zzqxvnonsense", CHAPTER)


def test_pages_lists_reading_pages_only(copy):
    found = pages(copy)
    assert CHAPTER in found and "report.html" in found
    assert not any(p in found for p in ("search.html", "genindex.html")) and not any("_static" in p for p in found)


def test_unique_scripts_treats_a_missing_filename_as_one():
    class JS:
        def __init__(self, filename, body):
            self.filename, self.priority, self.attributes = filename, 500, {"body": body}

    a, b, c, d = JS(None, "const X = 1"), JS("", "const X = 1"), JS(None, "const Y = 2"), JS("doctools.js", "")
    assert unique_scripts([d, a, c, b, d]) == [d, a, c]


def test_the_command_line_check_prints_each_page_and_fails_on_a_broken_one(copy, driver, capsys):
    from ptmlib.book.sitecheck import main

    for page in pages(copy):  # keep one chapter: the command checks whatever pages the build has
        if page != CHAPTER:
            (copy / page).unlink()
    assert main([str(copy)]) == 0
    assert capsys.readouterr().out.startswith(f"{CHAPTER}: ok (")
    figure = re.search(r'<img[^>]*src="../../(_images/[^"]+)"', (copy / CHAPTER).read_text()).group(1)
    (copy / figure).unlink()
    assert main([str(copy)]) == 1 and "figure not loaded" in capsys.readouterr().out
    assert main([]) == 2


def test_search_term_is_the_longest_word_of_the_title():
    assert search_term("1. Transformers learn linear regression in context") == "transformers"
    with pytest.raises(ValueError, match="no searchable word"):
        search_term("1. A b")


def test_a_missing_notebook_download_fails(copy, driver):
    for notebook in (copy / "_downloads").rglob("*-student.ipynb"):
        notebook.unlink()
    problems = _problems(copy, driver)
    assert any(p.startswith("download link broken:") and p.endswith("-student.ipynb") for p in problems), problems


_LAB_NOTEBOOK = """
const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
if (!nb) return null;
const cells = nb.querySelectorAll('.jp-Cell');
const code = [...nb.querySelectorAll('.jp-CodeCell .jp-InputArea-editor')].map(e => e.textContent);
const title = nb.querySelector('.jp-MarkdownCell h1');
const tab = document.querySelector('#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel');
const kernel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Toolbar-kernelName');
return {cells: cells.length, code: code, title: title && title.textContent, tab: tab && tab.textContent,
        kernel: kernel && kernel.textContent.trim()};
"""


@needs_browser
def test_jupyterlab_opens_a_chapter_as_a_notebook_on_the_book_kernel(root, driver):
    """`ptm lab`'s server in Chromium: the chapter's .md renders as a notebook (not as a text file), its
    parameters cell first, on the kernel named for the book; a screenshot lands beside the book's."""
    from selenium.webdriver.support.ui import WebDriverWait

    from ptmlib.book.lab import DISPLAY_NAME, configure, serve_lab

    configure()  # what `ptm lab` does before it starts the server
    with serve_lab(root) as (base, token):
        driver.get(f"{base}lab/tree/chapters/icl/linear_regression.md?token={token}")

        def rendered(d):
            seen = d.execute_script(_LAB_NOTEBOOK)
            ready = seen and seen["cells"] >= 10 and seen["title"] and seen["code"] and "profile =" in seen["code"][0]
            return seen if ready and seen["kernel"] == DISPLAY_NAME else False

        seen = WebDriverWait(driver, 180, poll_frequency=0.5).until(rendered)
        assert seen["tab"] == "linear_regression.md" and not driver.find_elements("css selector", ".jp-FileEditor")
        assert "Transformers learn linear regression in context" in seen["title"]  # markdown rendered as cells
        driver.execute_script("document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell')"
                              ".scrollIntoView({block: 'center'})")  # the parameters cell, in the screenshot
        time.sleep(1)
        shot = root / "_build" / "test-book" / "_build" / "screenshots" / "jupyterlab_linear_regression.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 50_000

"""Check the rendered book in a real browser: headless Chromium driven by Selenium.

The book is served on loopback and every page is opened as a reader would open it. A page passes when
the browser logged no console error, every image decoded (natural width > 0), every formula was
typeset by MathJax (no raw TeX left in the text), a chapter shows its claims scorecard, every
solution dropdown starts closed and opens on a click, and the search page finds the page from a word
of its title. Nothing is downloaded: the browser is Debian's `chromium` and `chromium-driver`.

    with serve(html_dir) as base, chromium() as driver:
        problems = check_page(driver, base, "chapters/icl/linear_regression.html")
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Pages that are machinery rather than reading: the index redirect, the general index, the search page.
SKIP = ("genindex.html", "search.html", "index.html")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1600")


def browser_available() -> bool:
    """True when Chromium, its driver and Selenium are installed."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1 (a free port); yields the base URL ending in '/'."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium WebDriver that records the console, with a throwaway profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ptm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def pages(html_dir: Path) -> list[str]:
    """Every reading page of the built book, as paths relative to `html_dir`."""
    found = sorted(p.relative_to(html_dir).as_posix() for p in html_dir.glob("**/*.html"))
    return [p for p in found if p not in SKIP and not p.startswith(("_static/", "_sources/", "_images/"))]


_WAIT_MATH = """
const limit = arguments[0], done = arguments[arguments.length - 1];
if (!document.querySelector('.math')) { done('none'); return; }
const t0 = Date.now();
(function poll() {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(() => done('typeset'), e => done('error: ' + e));
  } else if (Date.now() - t0 > limit) { done('MathJax never loaded'); }
  else { setTimeout(poll, 50); }
})();
"""

_RAW_TEX = r"""
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
const raw = [];
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  if (n.parentElement.closest('pre, code, script, style, textarea, mjx-container')) continue;
  const m = n.textContent.match(/\\\(|\\\[|\$\$/);
  if (m) raw.push(n.textContent.trim().slice(0, 60));
}
return raw;
"""


@dataclass
class PageCheck:
    """What the browser saw on one page: its problems (empty when sound) and what it checked."""
    path: str
    problems: list[str] = field(default_factory=list)
    formulas: int = 0     # typeset formulas (MathJax output elements)
    figures: int = 0      # images that decoded
    dropdowns: int = 0    # solution dropdowns that opened on a click
    scorecard: bool = False
    downloads: int = 0    # notebook download links whose file the server returned as a notebook
    title: str = ""       # the page's first heading


def check_page(driver: Any, base: str, path: str, math_timeout_ms: int = 20000) -> PageCheck:
    """Open `path` under `base` and check it as described in the module docstring."""
    from selenium.webdriver.common.by import By

    page = PageCheck(path)
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(base + path)
    page.title = _title(driver)
    if not page.title:
        page.problems.append("no title (h1)")
    math = driver.execute_async_script(_WAIT_MATH, math_timeout_ms)
    if math not in ("none", "typeset"):
        page.problems.append(f"math: {math}")
    if math != "none":
        untypeset = driver.execute_script(
            "return [...document.querySelectorAll('.math')].filter(e => !e.querySelector('mjx-container')).length")
        if untypeset:
            page.problems.append(f"math: {untypeset} formula(s) not typeset")
    page.formulas = driver.execute_script("return document.querySelectorAll('mjx-container').length")
    raw = driver.execute_script(_RAW_TEX)
    if raw:
        page.problems.append(f"math: raw TeX in the text: {raw[0]!r}")
    images = driver.execute_script(
        "return [...document.images].map(i => [i.src, i.complete && i.naturalWidth > 0])")
    page.figures = sum(ok for _, ok in images)
    page.problems += [f"figure not loaded: {src}" for src, ok in images if not ok]
    page.scorecard = bool(driver.find_elements(By.CSS_SELECTOR, "table.ptm-scorecard"))
    if path.startswith("chapters/") and not page.scorecard:
        page.problems.append("no claims scorecard")
    if path.startswith("chapters/"):
        page.downloads, problems = _check_downloads(driver)
        page.problems += problems
    if driver.find_elements(By.ID, "ptm-part-filter"):
        page.problems += _check_part_filter(driver)
    page.dropdowns, problems = _check_dropdowns(driver)
    page.problems += problems
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    page.problems += [f"console error: {m}" for m in errors]
    return page


_FETCH_NOTEBOOKS = """
const done = arguments[arguments.length - 1];
const links = [...document.querySelectorAll("a.download")].map(a => a.href).filter(h => h.endsWith(".ipynb"));
Promise.all(links.map(h => fetch(h).then(r => r.ok ? r.json() : null).then(j => [h, !!(j && j.cells)])
                                .catch(() => [h, false]))).then(done);
"""


def _check_downloads(driver: Any) -> tuple[int, list[str]]:
    """A chapter offers two notebooks to download (executed, student), and each link returns a notebook."""
    found = driver.execute_async_script(_FETCH_NOTEBOOKS)
    problems = [f"download link broken: {href}" for href, ok in found if not ok]
    if len(found) != 2:
        problems.append(f"{len(found)} notebook download link(s), expected 2 (executed and student)")
    return sum(ok for _, ok in found), problems


def _check_part_filter(driver: Any) -> list[str]:
    """The report's part filter: choosing a part leaves exactly that part's rows visible."""
    from selenium.webdriver.support.ui import Select
    from selenium.webdriver.common.by import By

    select = Select(driver.find_element(By.ID, "ptm-part-filter"))
    rows = driver.find_elements(By.CSS_SELECTOR, "table.ptm-report tbody tr")
    labels = [r.find_element(By.TAG_NAME, "td").get_attribute("textContent").strip() for r in rows]
    problems = []
    for option in [o.get_attribute("value") for o in select.options if o.get_attribute("value")]:
        select.select_by_value(option)
        shown = [label for r, label in zip(rows, labels) if r.is_displayed()]
        if not shown or set(shown) != {option} or len(shown) != labels.count(option):
            problems.append(f"part filter {option!r} shows {len(shown)} rows of parts {sorted(set(shown))}")
    select.select_by_value("")
    if sum(r.is_displayed() for r in rows) != len(rows):
        problems.append("part filter 'All parts' does not show every row")
    return problems


def _check_dropdowns(driver: Any) -> tuple[int, list[str]]:
    """Each dropdown admonition (the solutions) is closed when the page opens and opens on a click."""
    from selenium.webdriver.common.by import By

    problems, opened = [], 0
    for box in driver.find_elements(By.CSS_SELECTOR, ".admonition.dropdown"):
        title = box.find_element(By.CSS_SELECTOR, ".admonition-title").text.strip()
        body = [e for e in box.find_elements(By.XPATH, "./*") if "admonition-title" not in e.get_attribute("class")
                and e.tag_name != "button"]
        if not body:
            problems.append(f"dropdown {title!r} is empty")
            continue
        if body[0].is_displayed():
            problems.append(f"dropdown {title!r} is open before a click")
            continue
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
        box.find_element(By.CSS_SELECTOR, ".admonition-title").click()
        deadline = time.time() + 5
        while not body[0].is_displayed() and time.time() < deadline:
            time.sleep(0.05)
        if not body[0].is_displayed():
            problems.append(f"dropdown {title!r} does not open on a click")
        else:
            opened += 1
    return opened, problems


def _title(driver: Any, timeout: float = 10) -> str:
    """The text of the page's first h1 (waiting for the document to finish loading)."""
    deadline = time.time() + timeout
    while True:
        title = driver.execute_script(
            "const h = document.readyState === 'complete' && document.querySelector('h1');"
            "return h ? h.textContent.replace(/#$/, '').trim() : ''")
        if title or time.time() > deadline:
            return title
        time.sleep(0.05)


def search_term(title: str) -> str:
    """The longest word of a page title: what a reader would type to find the page again."""
    words = re.findall(r"[A-Za-z]{4,}", title)
    if not words:
        raise ValueError(f"no searchable word in the title {title!r}")
    return max(words, key=len).lower()


def search_finds(driver: Any, base: str, term: str, path: str, timeout: float = 30) -> bool:
    """True when the book's search page, asked for `term`, lists the page `path`."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base}search.html?q={term}")
    deadline = time.time() + timeout
    while time.time() < deadline:
        summary = driver.find_elements(By.CSS_SELECTOR, "#search-results .search-summary, #search-results p")
        if any("found" in s.text.lower() or "did not match" in s.text.lower() for s in summary):
            break
        time.sleep(0.1)
    links = driver.execute_script(
        "return [...document.querySelectorAll('#search-results ul.search a')].map(a => a.getAttribute('href'))")
    return any(link.split("?")[0].split("#")[0] == path for link in links)


def check_site(html_dir: Path, screenshots: Path | None = None,
               shots: tuple[str, ...] = ("chapters/icl/linear_regression.html", "report.html")) -> list[PageCheck]:
    """Check every page of the built book in `html_dir`; optionally save screenshots of `shots` there."""
    report = []
    with serve(html_dir) as base, chromium() as driver:
        for path in pages(html_dir):
            page = check_page(driver, base, path)
            if page.title:
                term = search_term(page.title)
                if not search_finds(driver, base, term, path):
                    page.problems.append(f"search for {term!r} does not list the page")
            report.append(page)
        if screenshots is not None:
            screenshots.mkdir(parents=True, exist_ok=True)
            for path in shots:
                driver.get(base + path)
                driver.execute_async_script(_WAIT_MATH, 20000)
                driver.save_screenshot(str(screenshots / (path.replace("/", "_").removesuffix(".html") + ".png")))
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m ptmlib.book.sitecheck HTML_DIR [SCREENSHOT_DIR]`: print each page's problems; 1 if any."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m ptmlib.book.sitecheck HTML_DIR [SCREENSHOT_DIR]", file=sys.stderr)
        return 2
    report = check_site(Path(args[0]), Path(args[1]) if len(args) > 1 else None)
    for page in report:
        status = "ok" if not page.problems else "; ".join(page.problems)
        print(f"{page.path}: {status} ({page.formulas} formulas, {page.figures} figures, {page.dropdowns} dropdowns)")
    return int(any(p.problems for p in report))


if __name__ == "__main__":
    raise SystemExit(main())

"""The book as a website (``make site``): build it from the committed notebooks and read it in headless Chromium.

One build (``accel.book.site.build``, Jupyter Book) into a temporary folder, served from 127.0.0.1; Chromium (Debian's,
driven by Playwright as in tests/test_browser.py) may fetch nothing else, as on a machine without network. The test
opens the home page, two chapters, the search page and the API pages, and checks what a reader needs: the navigation
to every chapter, the committed figures loaded, the claims' verdicts (✓/✗) and "Results at a glance", each chapter's
Colab link (the one accel.book.links derives from pyproject), working offline search, and the documented classes.
Screenshots go to ``build/site-screenshots/``.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_browser import CHROMIUM_ARGS, ensure_chromium, import_playwright  # tests/test_browser.py

from accel.book import links
from accel.book.site import build
from accel.book.site.docstrings import plain_text_to_rst

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHAPTERS = ["01_infobatch", "03_cowclip"]  # the two chapters read in the browser
SHOT_DIR = REPO / "build" / "site-screenshots"
API = {  # API page -> the documented objects it must show (autodoc's anchors)
    "infobatch": ["accel.infobatch.InfoBatch", "accel.infobatch.WithIndex"],
    "echo": ["accel.echo.echoing_loader", "accel.echo.echo", "accel.echo.echo_batches"],
    "cowclip": ["accel.cowclip.CowClip", "accel.cowclip.clip_embedding_grad_", "accel.cowclip.scaled_hparams"],
    "moe": ["accel.moe.MoE", "accel.moe.expert_capacity"],
}
WIDGET_FALLBACK = "Interactive explorer: its controls run in a live kernel"


class Site:
    def __init__(self, root: Path, warnings: list[str], seconds: float, port: int):
        self.root, self.warnings, self.seconds, self.port = root, warnings, seconds, port
        self.blocked: list[str] = []  # requests to anywhere but the local server (refused, as offline)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("site")
    started = time.monotonic()
    warnings = build(tmp / "site", work=tmp / "work")
    seconds = time.monotonic() - started
    print(f"\nsite built in {seconds:.1f} s, {len(warnings)} warnings")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tmp / "site")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(tmp / "site", warnings, seconds, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def page(site):
    chromium = ensure_chromium()
    sync_playwright = import_playwright()
    local = site.url("")

    def offline(route):
        if route.request.url.startswith(local):
            route.continue_()
        else:
            site.blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.route("**/*", offline)
            pg = context.new_page()
            pg.set_default_timeout(30_000)
            yield pg
        finally:
            browser.close()
    if site.blocked:
        print("\nrefused (offline):", *sorted({url.split("?")[0] for url in site.blocked}), sep="\n  ")


def open_page(page, site: Site, path: str):
    response = page.goto(site.url(path), wait_until="load")
    assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"
    return page


def screenshot(page, name: str) -> None:
    SHOT_DIR.mkdir(parents=True, exist_ok=True)
    # from the top, with nothing focused: a scrolled page would draw its sticky header mid-way down the picture
    page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }")
    page.screenshot(path=str(SHOT_DIR / f"{name}.png"), full_page=True)


def png_outputs(notebook: Path) -> int:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return sum("image/png" in out.get("data", {}) for cell in cells for out in cell.get("outputs", []))


def test_builds_without_warnings(site):
    assert site.warnings == [], "the site built with warnings:\n" + "\n".join(site.warnings)
    assert (site.root / "index.html").is_file() and (site.root / "searchindex.js").is_file()


def test_home_page_navigates_to_every_chapter(site, page):
    open_page(page, site, "index.html")  # Jupyter Book's index.html forwards to the root page, intro.html
    page.wait_for_url("**/intro.html")
    page.wait_for_load_state("load")
    screenshot(page, "home")
    assert page.locator("article h1").first.inner_text().startswith("accel")
    nav = page.locator("nav.bd-docs-nav")
    hrefs = [nav.locator("a").nth(i).get_attribute("href") for i in range(nav.locator("a").count())]
    for notebook in NOTEBOOKS:
        assert any(href and href.endswith(f"notebooks/{notebook.stem}.html") for href in hrefs), (notebook.name, hrefs)
    assert any(href and href.endswith("api/index.html") for href in hrefs), hrefs
    # the README's chapter table links to the chapters' pages, not to .ipynb files
    article_links = page.locator("article a[href$='01_infobatch.html']")
    assert article_links.count() >= 1


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_shows_figures_verdicts_and_colab_link(site, page, chapter):
    notebook = REPO / "notebooks" / f"{chapter}.ipynb"
    open_page(page, site, f"notebooks/{chapter}.html")
    try:
        article = page.locator("article")
        assert article.locator("h1").first.inner_text().startswith(chapter[:2])

        # Figures: every committed PNG output, loaded (an image that failed to load has naturalWidth 0).
        images = article.locator(".cell_output img")
        images.last.scroll_into_view_if_needed()
        page.wait_for_function(
            "() => [...document.querySelectorAll('article .cell_output img')].every(img => img.complete)"
        )
        widths = images.evaluate_all("imgs => imgs.map(img => img.naturalWidth)")
        assert len(widths) == png_outputs(notebook) > 0, (len(widths), png_outputs(notebook))
        assert all(width > 0 for width in widths), f"{chapter}: figures that did not load: {widths}"

        # The verdicts and the glance table.
        text = article.inner_text()
        verdicts = [line for line in text.splitlines() if line.lstrip().startswith(("✓", "✗"))]
        assert len(verdicts) >= 2, f"{chapter}: no ✓/✗ claim lines on the page"
        glance = article.locator("h3:has-text('Results at a glance')")
        assert glance.count() == 1, f"{chapter}: no 'Results at a glance' heading"
        table = article.locator("h3:has-text('Results at a glance') ~ table, "
                                "h3:has-text('Results at a glance') ~ div table").first
        assert "paper" in table.inner_text() and "this run" in table.inner_text()

        # The explorer: its static readout, and the widget's one-line text fallback (no live widget offline).
        assert "Readout at" in text and WIDGET_FALLBACK in text
        assert "Traceback (most recent call last)" not in text

        # The launch button opens this chapter on Colab, at the address the notebook's own badge carries.
        launch = page.locator(".dropdown-launch-buttons a.dropdown-item:has-text('Colab')")  # its title: a tooltip
        assert launch.count() == 1, f"{chapter}: no Colab launch button"
        assert launch.get_attribute("href") == links.colab_url(notebook.name)
        badge = article.locator("a[href^='https://colab.research.google.com/github/']").first
        assert badge.get_attribute("href") == links.colab_url(notebook.name)
    finally:
        screenshot(page, chapter)


def test_search_works_offline(site, page):
    open_page(page, site, "search.html?q=capacity+factor")
    results = page.locator("#search-results ul.search li")
    results.first.wait_for(state="visible")
    page.wait_for_timeout(500)  # let the result list fill in
    screenshot(page, "search")
    found = [results.nth(i).locator("a").first.get_attribute("href") for i in range(results.count())]
    assert any("04_st_moe" in href for href in found), found
    assert any("api/moe" in href for href in found), found


def test_api_pages_document_the_four_modules(site, page):
    open_page(page, site, "api/index.html")
    for module in API:
        assert page.locator(f"article a[href$='{module}.html']").count() >= 1, module
    for module, objects in API.items():
        open_page(page, site, f"api/{module}.html")
        if module == "infobatch":
            screenshot(page, "api_infobatch")
        for name in objects:
            entry = page.locator(f"dt[id='{name}']")
            assert entry.count() == 1, f"api/{module}.html does not document {name}"
        assert page.locator("article .problematic, article .system-message").count() == 0, module
        assert page.locator("article .doctest").count() >= 1, f"api/{module}.html: the usage example is missing"


def test_plain_text_docstrings_read_as_written():
    """The API pages' docstring reader (accel/book/site/docstrings.py): a list or an indented block straight after a
    paragraph, plain-text markup characters, `code`; a doctest passes unchanged."""
    doc = [
        "Steps, with |D1| and *args:",
        "  1. first, a long item",
        "     that goes on;",
        "  2. second.",
        "For every k",
        "    cnt_k = number of samples",
        "    clip_k = cnt_k * r",
        "and `x * y` is code; clip_grad_ works.",
        "",
        ">>> 2 * 3",
        "6",
    ]
    assert plain_text_to_rst(doc) == [
        r"Steps, with \|D1\| and \*args:",
        "",
        "1. first, a long item",
        "   that goes on;",
        "2. second.",
        "",
        "For every k",
        "",
        ".. code-block:: text",
        "",
        "    cnt_k = number of samples",
        "    clip_k = cnt_k * r",
        "",
        r"and ``x * y`` is code; clip_grad\_ works.",
        "",
        ">>> 2 * 3",
        "6",
    ]

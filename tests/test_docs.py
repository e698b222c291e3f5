"""The documentation: README.md stays short, and the site (mkdocs.yml, docs/) builds strictly,
with every page there and every link inside it leading somewhere, and renders in a browser."""

import functools
import html.parser
import http.server
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


def test_the_readme_is_a_short_guide_without_the_teams_bookkeeping():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text()
        assert not re.search(r"\bissues? #?\d+", text, re.I), page
    # The two commands come first: install and the main job, then the tests.
    assert readme.index("pip install -e . && bitkeras finetune") < readme.index(
        "python -m pytest -n auto tests --slow")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built as a reader gets it: `mkdocs build --strict`."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path_factory.mktemp("docs") / "site"
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                            str(site)], cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    return site


def test_the_site_builds_strictly_and_its_pages_and_links_are_whole(site):
    pages = sorted(site.rglob("*.html"))
    names = {str(page.relative_to(site)) for page in pages}
    for page in ("index.html", "api/index.html", "modules/index.html",
                 "guide/finetuning/index.html", "guide/weights/index.html"):
        assert page in names, sorted(names)
    api = (site / "api" / "index.html").read_text()
    for symbol in ("BiTClassifier", "HyperRule", "from_preset", "a dense head returning logits"):
        assert symbol in api, symbol
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text())
        for link in parser.links:
            target = link.split("#")[0].split("?")[0]
            if not target or re.match(r"^[a-z]+:", target):
                continue
            resolved = (site / target.lstrip("/") if target.startswith("/")
                        else page.parent / target).resolve()
            if resolved.is_dir():
                resolved = resolved / "index.html"
            assert resolved.exists(), (str(page.relative_to(site)), link)


def _fences(markdown_page):
    return sum(1 for line in markdown_page.read_text().splitlines()
               if line.startswith("```") and line.strip() != "```")


@pytest.fixture(scope="module")
def served(site):
    """The built site on a local HTTP server, as `mkdocs serve` would show it."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


# Debian's Chromium, started as the machine's notes say it must be here: headless, and with
# nothing that reaches out to Google's hosts.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


def test_every_page_renders_in_a_browser_offline_and_search_finds_the_rule(site, served,
                                                                             tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                    "google-chrome"))), None)
    if chromium is None:
        pytest.skip("no Chromium to render the site in: apt-get install chromium "
                    "(.ci/run installs it where it may)")
    pages = sorted(page.relative_to(site).parent for page in site.rglob("index.html")
                   if "search" not in page.parts)
    assert len(pages) >= 9, pages
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems = []
        page.on("console", lambda message: message.type == "error" and problems.append(
            message.text))
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("requestfailed", lambda request: problems.append(request.url))
        page.on("request", lambda request: request.url.startswith(served) or request.url
                .startswith("data:") or problems.append(f"leaves the site: {request.url}"))
        for path in pages:
            page.goto(f"{served}/{path.as_posix()}/".replace("/./", "/"),
                      wait_until="networkidle")
            assert not problems, (str(path), problems)
            assert page.locator(".navbar").first.is_visible(), path
            heading = page.locator("h1").first
            assert heading.is_visible() and heading.inner_text().strip(), path
            assert page.locator("[role=main]").first.bounding_box()["height"] > 200, path
            source = ROOT / "docs" / (f"{path}.md" if str(path) != "." else "index.md")
            blocks = page.locator(".codehilite pre")
            assert blocks.count() >= _fences(source), path  # the API adds docstrings'
            for index in range(blocks.count()):  # coloured when built, not by a CDN script
                assert blocks.nth(index).locator("span[style*=color]").count() > 0, path
        page.goto(f"{served}/guide/finetuning/", wait_until="networkidle")
        page.screenshot(path=str(tmp_path / "finetuning.png"), full_page=False)
        page.keyboard.press("s")  # the theme's shortcut to its search box
        page.locator("#mkdocs-search-query").press_sequentially("HyperRule")
        found = page.locator("#mkdocs-search-results a")
        found.first.wait_for(timeout=10_000)
        assert found.count() >= 2 and not problems, problems
        browser.close()

"""The documentation: README.md stays short, and the site (mkdocs.yml, docs/) builds strictly,
with every page there and every link inside it leading somewhere, and renders in a browser."""

import ast
import functools
import html.parser
import http.server
import importlib
import inspect
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
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


# The guide's Python examples. Each runs as written, in a folder that holds the files it
# names (`photos/train`, `photos/test`, `rose.jpg`), offline, on what ships. An example
# that needs what no test can have here (released weights from the network, a COCO folder
# of one's own) says so in an HTML comment on the line before it, `<!-- not run: WHY -->`,
# and is checked instead: every bitkeras name it uses exists and every call it makes
# binds to that function's signature.
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->")
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]


def _python_examples():
    examples = []
    for page in GUIDES:
        lines = page.read_text().splitlines()
        for start, line in enumerate(lines):
            if line.strip() == "```python":
                end = lines.index("```", start + 1)
                reason = NOT_RUN.search(lines[start - 1]) if start else None
                name = f"{page.relative_to(ROOT)}:{start + 1}"
                examples.append(pytest.param("\n".join(lines[start + 1:end]),
                                             reason and reason.group(1), id=name))
    return examples


EXAMPLES = _python_examples()


def test_most_examples_run_and_each_one_that_does_not_says_why():
    skipped = [example.values[1] for example in EXAMPLES if example.values[1]]
    assert len(EXAMPLES) - len(skipped) >= 4, skipped  # the tour, own folder, family, scale
    assert all(len(reason) > 10 for reason in skipped), skipped


def _example_folder(root):
    from PIL import Image

    from tests.helpers import make_image_folder

    for split, seed in (("train", 0), ("test", 1)):
        make_image_folder(root / "photos" / split, per_class=2, seed=seed, extras=False)
    Image.fromarray(np.full((40, 40, 3), (200, 30, 40), np.uint8)).save(root / "rose.jpg")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("source, not_run", [e for e in EXAMPLES if not e.values[1]])
def test_the_guides_examples_run_as_written(source, not_run, tmp_path, monkeypatch):
    import keras

    monkeypatch.chdir(_example_folder(tmp_path))
    policy = keras.config.dtype_policy()
    try:  # in this process, as doctest runs the docstrings: TensorFlow is loaded once
        exec(compile(source, "example", "exec"), {"__name__": "example"})
    finally:
        keras.config.set_dtype_policy(policy)


class _Calls(ast.NodeVisitor):
    """What a not-run example uses, checked against the objects it names."""

    def __init__(self):
        self.names, self.problems = {}, []

    def resolve(self, node):
        if isinstance(node, ast.Name):
            return self.names.get(node.id)
        if isinstance(node, ast.Attribute):
            owner = self.resolve(node.value)
            if owner is None:
                return None
            if not hasattr(owner, node.attr):
                self.problems.append(f"{ast.unparse(node)}: no such attribute")
                return None
            return getattr(owner, node.attr)
        if isinstance(node, ast.Call):  # Class(...) and Class.from_preset(...) give a Class
            called = self.resolve(node.func)
            if isinstance(called, type):
                return called
            owner = getattr(called, "__self__", None)
            return owner if isinstance(owner, type) else None
        return None

    def visit_Import(self, node):
        for alias in node.names:
            module = importlib.import_module(alias.name)
            self.names[alias.asname or alias.name.split(".")[0]] = (
                module if alias.asname else importlib.import_module(alias.name.split(".")[0]))

    def visit_ImportFrom(self, node):
        module = importlib.import_module(node.module)
        for alias in node.names:
            if not hasattr(module, alias.name):
                self.problems.append(f"from {node.module} import {alias.name}: no such name")
            self.names[alias.asname or alias.name] = getattr(module, alias.name, None)

    def visit_Assign(self, node):
        self.generic_visit(node)
        value = self.resolve(node.value) if isinstance(node.value, ast.Call) else None
        for target in node.targets:
            if isinstance(target, ast.Name):
                self.names[target.id] = value

    def visit_Call(self, node):
        self.generic_visit(node)
        called = self.resolve(node.func)
        if not callable(called):
            return
        try:
            signature = inspect.signature(called)
        except (TypeError, ValueError):
            return
        if getattr(called, "__qualname__", "") == "FineTuningClassifier.fit":
            # fit's **kwargs is there only to refuse, saying where each keyword goes.
            signature = signature.replace(parameters=[
                p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD])
        arguments = [None] * sum(not isinstance(a, ast.Starred) for a in node.args)
        keywords = {k.arg: None for k in node.keywords if k.arg}
        try:
            signature.bind_partial(*arguments, **keywords)
        except TypeError as error:
            self.problems.append(f"{ast.unparse(node)[:80]}: {error}")


@pytest.mark.parametrize("source, not_run", [e for e in EXAMPLES if e.values[1]])
def test_the_examples_not_run_name_what_exists_and_call_it_as_it_takes(source, not_run):
    calls = _Calls()
    calls.names["bitkeras"] = importlib.import_module("bitkeras")
    for name in ("BiTBackbone", "BiTClassifier", "ResNetBackbone", "ResNetClassifier"):
        calls.names[name] = getattr(calls.names["bitkeras"], name)
    calls.visit(ast.parse(source))
    assert not calls.problems, calls.problems


def test_the_example_checker_finds_a_renamed_call_and_a_wrong_keyword():
    calls = _Calls()
    calls.names["bitkeras"] = importlib.import_module("bitkeras")
    calls.visit(ast.parse('c = bitkeras.BiTClassifier.from_preset("R50x1")\n'
                          'c.classfy(["a.jpg"])\nc.fit("f", epoch=3)\nc.fit("f", epochs=3)'))
    assert len(calls.problems) == 2 and "classfy" in calls.problems[0], calls.problems
    assert "epoch" in calls.problems[1], calls.problems

"""The documentation: README.md stays short, and the site (mkdocs.yml, docs/) builds strictly,
with every page there and every link inside it leading somewhere."""

import html.parser
import pathlib
import re
import subprocess
import sys

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


def test_the_site_builds_strictly_and_its_pages_and_links_are_whole(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                            str(site)], cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
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

"""The README and the documentation site: every link resolves, the site builds with --strict, one command style."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The anchors MkDocs gives a page's headings (Python-Markdown's toc slugs), outside code blocks."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slugify(heading, "-") for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_readme_links_resolve():
    readme = ROOT / "README.md"
    links = [link for link in LINK.findall(readme.read_text()) if "://" not in link]
    assert links, "the README links its documentation"
    for link in links:
        path, _, anchor = link.partition("#")
        target = (ROOT / path) if path else readme
        assert target.is_file(), f"README links {link}: no file {path}"
        if anchor:
            assert anchor in anchors(target), f"README links {link}: no heading with anchor #{anchor} in {path}"


def test_readme_links_every_docs_page():
    linked = {Path(link.partition("#")[0]).name for link in LINK.findall((ROOT / "README.md").read_text())}
    pages = {page.name for page in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set()


def test_site_builds_strict(tmp_path):
    """--strict turns MkDocs' warnings into a failure: a link to a missing page or anchor, a page not in nav."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "site" / "sweeps" / "index.html").is_file()


def test_strict_build_fails_on_a_broken_anchor(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[sweeps](sweeps.md#no-such-heading)\n")
    (docs / "sweeps.md").write_text("# Sweeps\n")
    config = (ROOT / "mkdocs.yml").read_text()
    config = re.sub(r"(?ms)^nav:.*?(?=^\S)", "", config)  # this folder's two pages, not the site's nav
    (tmp_path / "mkdocs.yml").write_text(config)
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "no-such-heading" in done.stderr


@pytest.mark.parametrize("page", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))])
def test_one_command_style(page):
    """Commands assume the activated virtualenv (said once): no `.venv/bin/python` or `.venv/bin/pip`."""
    path = ROOT / page if page == "README.md" else ROOT / "docs" / page
    assert not re.search(r"\.venv/bin/(python|pip|mkdocs|pytest)", path.read_text())

"""The README and docs/ point at things that exist: pages, headings, make targets, modules and code."""
import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _text(path: Path) -> str:
    return path.read_text()


def _anchor(heading: str) -> str:
    """GitHub's id of a Markdown heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_anchor(h) for h in re.findall(r"^#+ (.+)$", _text(path), re.M)}


def _local_links(path: Path) -> list[tuple[str, Path, str]]:
    """(link as written, target file, anchor) of every relative link of a Markdown file."""
    out = []
    for link in LINK.findall(_text(path)):
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        out.append((link, (path.parent / target).resolve() if target else path, anchor))
    return out


def test_every_pointer_of_the_batch_walkthrough_names_existing_code():
    text = (REPO / "docs" / "life_of_a_batch.md").read_text()
    pointers = re.findall(r"`(src/[\w/]+\.py):([\w.]+)`", text)
    assert len(pointers) >= 9  # one per step at least
    for path, name in pointers:
        tree = ast.parse((REPO / path).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert set(name.split(".")) <= defined, f"{path}:{name}"


def test_readme_is_short_and_links_every_docs_page():
    lines = _text(README).splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines; the reference belongs in docs/"
    linked = {target for _, target, _ in _local_links(README)}
    assert len(PAGES) >= 9
    missing = [p.name for p in PAGES if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing} (its 'Where to read more' table should)"
    # the test command CI runs, and its time
    assert "make test" in _text(REPO / ".ci" / "run")
    assert re.search(r"make test +# .*about \d+ minutes", _text(README))


def test_the_generated_blocks_are_short():
    text = _text(README)
    for name, most in (("results", 20), ("scorecard", 16)):
        block = text.split(f"<!-- {name}:begin -->")[1].split(f"<!-- {name}:end -->")[0]
        assert 2 <= len(block.strip().splitlines()) <= most, name


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_relative_links_and_anchors_exist(page):
    for link, target, anchor in _local_links(page):
        assert target.exists(), f"{page.name}: link {link} -> {target} does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target), f"{page.name}: link {link}: no heading #{anchor} in {target.name}"


def test_make_targets_and_modules_named_in_the_docs_exist():
    makefile = _text(REPO / "Makefile")
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    named_targets, modules = set(), set()
    for page in (README, *PAGES):
        text = _text(page)
        named_targets |= set(re.findall(r"(?:`|^)make ([a-z][\w-]*)", text, re.M))  # code, not prose
        modules |= set(re.findall(r"python -m (src(?:\.\w+)+)", text))
    assert {"quickstart", "test", "report", "sweep", "bench", "gpu-check"} <= named_targets
    assert named_targets <= targets, f"not in the Makefile: {sorted(named_targets - targets)}"
    assert len(modules) >= 10
    for module in sorted(modules):
        path = REPO.joinpath(*module.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), module

"""docs/life_of_a_batch.md points at code: every `file:Class.function` it names exists."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_pointer_of_the_batch_walkthrough_names_existing_code():
    text = (REPO / "docs" / "life_of_a_batch.md").read_text()
    pointers = re.findall(r"`(src/[\w/]+\.py):([\w.]+)`", text)
    assert len(pointers) >= 9  # one per step at least
    for path, name in pointers:
        tree = ast.parse((REPO / path).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert set(name.split(".")) <= defined, f"{path}:{name}"
    assert "docs/life_of_a_batch.md" in (REPO / "README.md").read_text()

"""Every ```python example in README.md and docs/*.md runs as written (in a fresh namespace, in a temporary
directory): documentation that drifts from the API fails here."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in FILES:
        for i, match in enumerate(re.finditer(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)):
            blocks.append((f"{path.relative_to(ROOT)}#{i + 1}", match.group(1)))
    return blocks


def test_the_docs_have_python_examples():
    names = [name for name, _ in python_blocks()]
    assert any(n.startswith("README.md") for n in names) and any(n.startswith("docs/inference.md") for n in names)


@pytest.mark.parametrize("name,code", python_blocks(), ids=[name for name, _ in python_blocks()])
def test_python_example_runs(name, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, name, "exec"), {"__name__": "__docs__"})

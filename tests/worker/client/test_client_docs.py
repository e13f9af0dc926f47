"""docs/client.md's Python examples run as written against a real worker (only the URL is the test worker's)."""

from __future__ import annotations

import contextlib
import io
import re

import paths
import pytest

DOC = paths.REPO / "docs" / "client.md"
DOC_URL = "http://localhost:8080"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks() -> list[str]:
    return PYTHON_BLOCK.findall(DOC.read_text())


def test_the_doc_has_an_example_per_use():
    blocks = python_blocks()
    assert len(blocks) == 3
    for needed in ("client.similarity(", "client.memory_add(", "client.classifier_predict("):
        assert any(needed in block for block in blocks), needed
    for block in blocks:
        assert DOC_URL in block and len(block.strip().splitlines()) <= 16


@pytest.mark.parametrize("index", range(3))
def test_the_docs_python_examples_run(index, url):
    source = python_blocks()[index].replace(DOC_URL, url)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source, f"docs/client.md block {index + 1}", "exec"), {"__name__": "__main__"})
    if "memory_query" in source:  # the output its comment shows
        assert printed.getvalue().split() == ["green", "1.0"]

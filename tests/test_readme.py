"""Every Python example in README.md (the quick start first) runs as written, under each start method.

Each block runs as a script in a fresh interpreter, in its own session, from a
scratch directory, once under fork, spawn and forkserver; ``>>>`` blocks are run as doctests, so their printed output
must match too. The Ray examples start their own local Ray instance, as a
reader's would. The machinery is shared with test_docs.py (_mdexamples.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _mdexamples import Block, blocks, params, run_block

README = Path(__file__).resolve().parent.parent / "README.md"

BLOCKS = [b for b in blocks(README) if b.info == "python"]
# The README is one or two screens: the quick start and a few
# examples; the full set lives in docs/ and runs in test_docs.py. A block without an import
# (and not a doctest) would be a signature, not an example: none is allowed here.
SIGNATURES = [b for b in BLOCKS if "import " not in b.code and ">>>" not in b.code]
EXAMPLES = [b for b in BLOCKS if b not in SIGNATURES]


def test_every_readme_block_is_a_runnable_example() -> None:
    assert SIGNATURES == []
    assert len(EXAMPLES) >= 1


@pytest.mark.parametrize(("block", "start_method"), params(EXAMPLES))
def test_readme_example_runs(block: Block, start_method: str, tmp_path: Path) -> None:
    run_block(block, tmp_path, start_method=start_method)


def test_readme_reads_in_a_newcomers_order() -> None:
    """Pitch, install, a 30-second example of a DataFrame going to a pool, what you get, one
    benchmark line, contributing: no scrolling past tables and plots to the first code."""
    text = README.read_text()
    headings = [h for h in text.splitlines() if h.startswith("## ")]
    assert headings[:2] == ["## Install", "## Quick start"]
    assert headings.index("## Contributing") == len(headings) - 1
    first = BLOCKS[0]
    assert first.heading == "Quick start" and first.line < 40
    assert "pd.DataFrame" in first.code and "ProcessPoolExecutor" in first.code
    assert 'if __name__ == "__main__":' in first.code
    # No table or image before the example: the benchmark is one line, further down.
    before = text[: text.index("```python")]
    assert "|---" not in before and "![" not in before
    # Links a code host renders: guides, never the API reference's ::: directives.
    assert "docs/reference/" not in text

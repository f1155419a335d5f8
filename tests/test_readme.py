"""Every Python example in README.md runs as written (the quick start: test_public_api.py).

Each block runs as a script in a fresh interpreter, in its own session, from a
scratch directory; ``>>>`` blocks are run as doctests, so their printed output
must match too. The Ray examples start their own local Ray instance, as a
reader's would. The machinery is shared with test_docs.py (_mdexamples.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _mdexamples import Block, blocks, param, run_block

README = Path(__file__).resolve().parent.parent / "README.md"

BLOCKS = [b for b in blocks(README) if b.info == "python"]
# The README is one or two screens: the quick start (run by test_public_api.py) and a few
# examples; the full set lives in docs/ and runs in test_docs.py. A block without an import
# (and not a doctest) would be a signature, not an example: none is allowed here.
SIGNATURES = [b for b in BLOCKS if "import " not in b.code and ">>>" not in b.code]
EXAMPLES = [b for b in BLOCKS if b not in SIGNATURES and b.heading != "Quick start"]


def test_every_readme_block_is_a_runnable_example() -> None:
    assert SIGNATURES == []
    assert len(EXAMPLES) >= 1


@pytest.mark.parametrize("block", [param(b) for b in EXAMPLES])
def test_readme_example_runs(block: Block, tmp_path: Path) -> None:
    run_block(block, tmp_path)

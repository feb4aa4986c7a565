"""docs/bring-your-own.md's table of target sets per architecture is the one the code resolves."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "target_sets.py"


def test_the_target_set_table_in_the_docs_matches_the_code():
    spec = importlib.util.spec_from_file_location("docs_target_sets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = module.PAGE.read_text(encoding="utf-8")
    table = module.table()
    assert "| `gpt2` | refused: `c_attn` is query, key and value in one layer |" in table
    assert module.render(page) == page, "docs/bring-your-own.md's table is stale: run python docs/target_sets.py"

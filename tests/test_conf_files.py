"""Every knob in conf/ says what it does: each key line of each YAML file carries a comment, on the
line itself or on the line right above it (the style of torchtune's recipes and
lightning-hydra-template's configs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

CONF = Path(__file__).resolve().parent.parent / "conf"

KEY_LINE = re.compile(r"^\s*(?:-\s+)?(?:override\s+)?[A-Za-z_][\w./@-]*\s*:(?:\s|$)")
"""A line that sets a key: `r: 8`, `hydra:`, `  - model: tiny_llama`, `  - override hydra/job_logging: x`.
Plain list items (`- _self_`, `- export X=1`) are values, not knobs."""


def _conf_files() -> list[Path]:
    return sorted(CONF.rglob("*.yaml"))


def _uncommented_keys(path: Path) -> list[str]:
    missing = []
    name = path.relative_to(CONF) if path.is_relative_to(CONF) else path.name
    previous = ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if KEY_LINE.match(line):
            trailing = re.search(r"\s#\s*\S", line)
            above = re.match(r"^\s*#\s*\S", previous)
            if not (trailing or above):
                missing.append(f"{name}:{number}: {line.strip()}")
        if line.strip():
            previous = line
    return missing


@pytest.mark.parametrize("path", _conf_files(), ids=lambda p: str(p.relative_to(CONF)))
def test_every_key_line_has_a_comment(path):
    assert yaml.safe_load(path.read_text()) is not None  # the comments left it valid YAML with content
    assert _uncommented_keys(path) == []


def test_the_check_finds_an_uncommented_knob(tmp_path):
    sample = tmp_path / "sample.yaml"
    sample.write_text(
        "# a file comment\nr: 8  # rank\n# the scale\nlora_alpha: 16\n\ndropout: 0.1\n"
        "defaults:  # groups\n  - default\n  - model: tiny\n"
    )
    assert [m.split(": ", 1)[1] for m in _uncommented_keys(sample)] == ["dropout: 0.1", "- model: tiny"]
    assert "r: 8" not in str(_uncommented_keys(sample))

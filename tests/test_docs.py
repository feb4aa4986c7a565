"""The documentation stays true: the README's code map names every module, the configuration
reference (generated from the schema by docs/hooks.py) holds every field with its default and its
meaning, every page under docs/ is in the site's nav. CI also builds the site itself with
``mkdocs build --strict``."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def _hooks():
    spec = importlib.util.spec_from_file_location("lora_lab_docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code_map() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Code map", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `([\w/.]+)`:", section, flags=re.M)


def test_the_code_map_lists_every_module_and_only_those():
    on_disk = {p.name for p in (REPO / "lora_lab").glob("*.py") if p.name != "__init__.py"}
    on_disk |= {p.parent.name + "/" for p in (REPO / "lora_lab").glob("*/__init__.py")}
    listed = _code_map()
    assert len(listed) == len(set(listed)), "a module is listed twice in the README's code map"
    missing, stale = sorted(on_disk - set(listed)), sorted(set(listed) - on_disk)
    assert not missing, f"README.md's code map has no line for {missing}: add one line each (its job)"
    assert not stale, f"README.md's code map lists {stale}, which lora_lab/ does not hold"


def test_the_readme_stays_short_and_keeps_the_quick_start_markers():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    block = text.split("<!-- --8<-- [start:quickstart] -->", 1)[1].split("<!-- --8<-- [end:quickstart] -->", 1)[0]
    assert "python -m lora_lab.sweep +sweep=rank_alpha" in block  # docs/index.md includes this block


def _schema_classes():
    from lora_lab import config

    hooks = _hooks()
    seen, queue = [], [getattr(config, name) for _, name, _ in hooks.CONFIG_ROOTS]
    while queue:
        cls = queue.pop(0)
        if cls in seen:
            continue
        seen.append(cls)
        for f in dataclasses.fields(cls):
            nested = hooks._nested(cls, f)
            if nested:
                queue.append(nested[0])
    return seen


def test_the_configuration_reference_holds_every_field_with_its_default_and_meaning():
    from lora_lab import config

    hooks = _hooks()
    page = hooks.config_reference()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w.\[\]<>]+)` \|.*$", page, flags=re.M)}
    classes = _schema_classes()
    assert {c.__name__ for c in classes} >= {
        "ModelConfig",
        "LoraSettings",
        "TrainConfig",
        "SweepConfig",
        "ObjectiveConfig",
        "ParamSpec",
        "BaselineConfig",
        "WarmStartConfig",
        "ReportConfig",
    }
    undocumented = [k for k, row in rows.items() if row.endswith("| (undocumented) |")]
    assert not undocumented, f"schema fields without a docstring in lora_lab/config.py: {undocumented}"
    # every field of the trial schema is a row, with the schema's own default
    for group in ("model", "lora", "quant", "train", "data", "tracking"):
        cls = type(getattr(config.TrialConfig(), group))
        for f in dataclasses.fields(cls):
            row = rows[f"{group}.{f.name}"]
            if f.default is not dataclasses.MISSING and not isinstance(f.default, dict | list):
                assert f"| `{json.dumps(f.default)}` |" in row, row
    assert "| `lora.r` | `int` | `8` |" in page
    for cls in (config.ReportConfig, config.PretrainConfig):  # their own commands: top-level keys
        assert {f.name for f in dataclasses.fields(cls)} <= rows.keys(), cls.__name__
    for key in ("sweep.objectives[i].direction", "sweep.params.<name>.choices", "sweep.warm_start.top_k", "study"):
        assert key in rows, key


def test_a_field_without_a_docstring_shows_as_undocumented(monkeypatch):
    hooks = _hooks()
    original = hooks._docstrings

    def without_r():
        docs = original()
        docs["LoraSettings"].pop("r")
        return docs

    monkeypatch.setattr(hooks, "_docstrings", without_r)
    assert re.search(r"^\| `lora.r` \|.*\| \(undocumented\) \|$", hooks.config_reference(), flags=re.M)


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_every_page_under_docs_is_in_the_nav_and_missing_ones_are_left_out():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("tag:", lambda *a: None)
    site = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=Loader)
    listed = set(_nav_pages(site["nav"]))
    pages = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert not pages - listed, f"pages under docs/ that mkdocs.yml's nav leaves out: {sorted(pages - listed)}"

    hooks = _hooks()
    present = pages | {"reference/config.md"}
    kept = _nav_pages(hooks._filter_nav(site["nav"], present, [{"lora_lab": "api/lora_lab.md"}]))
    assert set(kept) == present | {"api/lora_lab.md"}
    assert "api/lora_lab.md" in kept


@pytest.mark.parametrize("module", ["lora_lab.config", "lora_lab.report.read", "lora_lab.sweep"])
def test_the_api_pages_cover_the_package(module):
    assert module in _hooks().lora_lab_modules()

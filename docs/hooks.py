"""MkDocs hooks (``hooks:`` in mkdocs.yml): the pages that are generated, so none can go stale.

* ``reference/config.md``: every field of every config group, its type, default and meaning, read
  from the schema (the dataclasses of ``lora_lab/config.py`` and their attribute docstrings).
* ``api/<module>.md``: one mkdocstrings page per module of the ``lora_lab`` package, found by walking
  the package, so a new module gets its page without an edit here.
* ``reports/...``: the committed reports and benchmark results under the repository's ``reports/``,
  so the documentation's tables link the files themselves.
* The nav of mkdocs.yml lists the pages meant to be there; an entry whose page does not exist (yet)
  is dropped instead of failing the strict build, and the API section is filled in.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

CONFIG_ROOTS = (
    ("model", "ModelConfig", "`model=<option>`: the base model (`conf/model/`)."),
    ("lora", "LoraSettings", "`lora=<option>`: the adapter, mapped onto PEFT's `LoraConfig` (`conf/lora/`)."),
    ("quant", "QuantConfig", "`quant=<option>`: bitsandbytes quantization of the base (`conf/quant/`)."),
    ("train", "TrainConfig", "`train=<option>`: the optimisation, given to transformers' Trainer (`conf/train/`)."),
    ("data", "DataConfig", "`data=<option>`: the examples (`conf/data/`)."),
    ("tracking", "TrackingConfig", "MLflow tracking of single runs (`conf/config.yaml`)."),
    ("sweep", "SweepConfig", "`+sweep=<preset>`: the search (`conf/sweep/`), for `python -m lora_lab.sweep`."),
    ("", "ReportConfig", "`python -m lora_lab.report` (`conf/report.yaml`): its own command line, `study=...`."),
    ("", "PretrainConfig", "`python -m lora_lab.pretrain` (`conf/pretrain.yaml`): its own command line."),
    (
        "",
        "ExportConfig",
        "`python -m lora_lab.export` (`conf/export.yaml`): its own command line, `adapter=... output_dir=...`.",
    ),
)
"""The sections of the configuration reference: the key a field sits under ('' for the top level of
a command of its own), its schema class and what sets it."""


def _docstrings(module: str = "lora_lab.config") -> dict[str, dict[str, str]]:
    """Attribute docstrings of every class of ``module`` ({class: {field: text}}), read by griffe
    (the parser behind mkdocstrings) from the source, as the API pages read them."""
    import griffe

    loaded = griffe.load(module, resolve_aliases=False)
    out: dict[str, dict[str, str]] = {}
    for name, member in loaded.members.items():
        if not member.is_alias and member.is_class:
            out[name] = {
                attr: sub.docstring.value
                for attr, sub in member.members.items()
                if sub.is_attribute and sub.docstring is not None
            }
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if value == "???":  # OmegaConf's MISSING
        return "(required)"
    if dataclasses.is_dataclass(value):  # only what differs from that schema's own defaults
        own = dataclasses.asdict(type(value)())
        value = {k: v for k, v in dataclasses.asdict(value).items() if own[k] != v}
        if not value:
            return "its defaults"
    return f"`{json.dumps(value, default=dataclasses.asdict)}`".replace("|", "\\|")


def _nested(owner: type, f: dataclasses.Field) -> tuple[type, str] | None:
    """The dataclass a field holds, and how its key continues: ``.`` (one), ``[i].`` (a list of
    them), ``.<name>.`` (a dict of them); None for a plain value."""
    hint = typing.get_type_hints(owner)[f.name]
    for arg in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(arg):
            return arg, "."
        origin, args = typing.get_origin(arg), typing.get_args(arg)
        if origin is list and args and dataclasses.is_dataclass(args[0]):
            return args[0], "[i]."
        if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
            return args[1], ".<name>."
    return None


def _type(owner: type, f: dataclasses.Field) -> str:
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return f"`{text}`".replace("|", "\\|")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def config_reference() -> str:
    """The configuration reference page (markdown): one table per schema class, every field with its
    type, default and its docstring from ``lora_lab/config.py``."""
    from lora_lab import config

    docs = _docstrings()
    lines = [
        "# Configuration reference",
        "",
        "Every field lora_lab reads, generated from the schema: the dataclasses of `lora_lab/config.py`,",
        "where each field, its default and its meaning are defined once. Set a field on the command line",
        "as `<key>=<value>` (`lora.r=16`, `sweep.seeds=5`); the YAML files under `conf/` pick values for",
        "the options of each group. Range and choice checks run when a config is composed, and a bad",
        "value stops the command with one paragraph naming the field and what is allowed.",
        "",
    ]
    queue: list[tuple[str, type, str]] = [(k, getattr(config, c), what) for k, c, what in CONFIG_ROOTS]
    documented: dict[type, str] = {}  # a schema class -> the key its table is under
    while queue:
        prefix, cls, what = queue.pop(0)
        documented.setdefault(cls, prefix)
        doc = " ".join((cls.__doc__ or "").split())
        title = f"`{prefix}`" if prefix else what.split(" (", 1)[0]
        lines += [f"## {title}", "", f"{what} Schema: `{cls.__name__}`. {doc}".strip(), ""]
        dot = f"{prefix}." if prefix else ""
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        later = []
        for f in dataclasses.fields(cls):
            meaning = docs.get(cls.__name__, {}).get(f.name, "")
            nested = _nested(cls, f)
            if nested is not None:
                sub, sep = nested
                key = f"{dot}{f.name}{sep.rstrip('.')}"
                if sub in documented:
                    meaning += f" Its fields are those of `{documented[sub]}` (`{sub.__name__}`)."
                else:
                    documented[sub] = key
                    later.append((key, sub, f"Inside `{prefix}`."))
                    meaning += f" Its fields: `{key}` below."
            lines.append(
                f"| `{dot}{f.name}` | {_type(cls, f)} | {_default(f)} | {_cell(meaning) or '(undocumented)'} |"
            )
        lines.append("")
        queue[0:0] = later
    return "\n".join(lines)


def lora_lab_modules() -> list[str]:
    """Every module of the lora_lab package (``lora_lab.report.read`` ...), packages too, sorted; found
    on disk (nothing is imported: mkdocstrings reads the source)."""
    package = REPO / "lora_lab"
    found = []
    for path in package.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__main__" or "conf" in parts or "assets" in parts:
            continue
        found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(found)


def api_page(module: str) -> str:
    return f"# `{module}`\n\n::: {module}\n"


# -- MkDocs events ------------------------------------------------------------------------------
def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    def add(path: str, content: str | bytes) -> None:
        files.append(File.generated(config, path, content=content))

    add("reference/config.md", config_reference())
    modules = lora_lab_modules()
    for module in modules:
        add(f"api/{module}.md", api_page(module))
    reports = REPO / "reports"
    for path in sorted(reports.rglob("*")):
        if path.is_file():
            add(f"reports/{path.relative_to(reports).as_posix()}", path.read_bytes())

    present = {f.src_uri for f in files}
    config["nav"] = _filter_nav(config["nav"], present, [{m: f"api/{m}.md"} for m in modules])
    return files


def _filter_nav(nav: list[Any], present: set[str], api: list[dict[str, str]]) -> list[Any]:
    """The nav without the pages that do not exist, the section named "API reference" filled with
    ``api`` and sections left empty dropped."""
    out = []
    for item in nav:
        if isinstance(item, str):
            if item in present or "://" in item:
                out.append(item)
            continue
        (title, value), *_ = item.items()
        if title == "API reference":
            out.append({title: api})
        elif isinstance(value, list):
            children = _filter_nav(value, present, api)
            if children:
                out.append({title: children})
        elif value in present or "://" in value:
            out.append({title: value})
    return out

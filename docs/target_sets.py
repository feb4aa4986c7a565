"""The table of docs/bring-your-own.md: what each named target set adapts on each architecture,
resolved by lora_lab.model.targets from transformers' own default config of each model type, built
on the meta device (no weights). ``python docs/target_sets.py`` rewrites the table in the page;
``--check`` exits 1 when the page differs (tests/test_docs_target_sets.py runs the check)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lora_lab import names
from lora_lab.config import ModelConfig
from lora_lab.errors import ConfigError
from lora_lab.model import targets

PAGE = Path(__file__).resolve().parent / "bring-your-own.md"
START, END = "<!-- target-sets:start (python docs/target_sets.py) -->", "<!-- target-sets:end -->"
MODEL_TYPES = ("llama", "qwen2", "mistral", "gemma2", "gemma3_text", "phi3", "phi", "gpt2", "gpt_neox", "falcon", "opt")
"""transformers model types in the table (those tests/test_architectures.py trains, and a few more)."""


def _cell(resolved: targets.TargetSet | ConfigError, found: targets.Layout) -> str:
    if isinstance(resolved, ConfigError):
        fused = ", ".join(f"`{n}`" for n in targets.fused_projections(found))
        return f"refused: {fused} is query, key and value in one layer" if fused else "refused"
    return ", ".join(f"`{m}`" for m in resolved.modules)


def table() -> str:
    """The markdown table, one row per model type."""
    header = ["model type", *names.TARGET_SETS, "layer type"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model_type in MODEL_TYPES:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, num_hidden_layers=1))
        found = targets.layout(model)
        cfg = ModelConfig(name=model_type, source="hub", pretrained=model_type)
        cells = []
        for name in names.TARGET_SETS:
            try:
                resolved = targets.resolve(model, name, cfg, found)
            except ConfigError as exc:
                resolved = exc
            cells.append(_cell(resolved, found))
        kind = "Conv1D (`fan_in_fan_out=True`)" if found.conv1d else "Linear"
        rows.append(f"| `{model_type}` | " + " | ".join(cells) + f" | {kind} |")
    return "\n".join(rows)


def render(page: str) -> str:
    """``page`` with the table between its markers replaced by the table of the current code."""
    before, rest = page.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{table()}\n{END}{after}"


if __name__ == "__main__":
    text = PAGE.read_text(encoding="utf-8")
    new = render(text)
    if "--check" in sys.argv[1:]:
        sys.exit(0 if new == text else 1)
    PAGE.write_text(new, encoding="utf-8")

"""Which layers a named target set (``lora.targets``) adapts, read from the model itself.

The sets mean the same on every architecture, whatever its layers are called:

- ``qv``: the query and value projections (the LoRA paper's choice), as PEFT's default targets for
  the model type name them (``peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``);
  an architecture that fuses query, key and value into one layer (GPT-2's ``c_attn``, GPT-NeoX's
  ``query_key_value``, Phi-3's ``qkv_proj``) cannot adapt query and value alone, and is refused;
- ``attn``: every linear layer inside the attention blocks (input projections and output projection);
- ``mlp``: every other linear layer of the repeated decoder layers (the feed-forward block);
- ``all_linear``: PEFT's ``target_modules="all-linear"``: every linear layer but the output head.

Layers are found by type (``torch.nn.Linear``, which bitsandbytes' 4- and 8-bit layers subclass, and
transformers' ``Conv1D``) and placed by where they sit: inside a module whose class name has
"Attention" in it, or elsewhere inside an element of the decoder's layer list. Names are given to
PEFT as the shortest suffix that picks exactly the set's layers (GPT-2's ``attn.c_proj`` and
``mlp.c_proj`` share the short name ``c_proj``). Conv1D layers store their weight transposed, so a
set of them gets ``fan_in_fan_out=True``.

``model_skeleton`` builds a model from its config alone on the meta device (no weights read), so the
sets of a configured model can be resolved before anything loads (``target_sets_for``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from lora_lab import names
from lora_lab.config import LoraSettings, ModelConfig
from lora_lab.errors import ConfigError
from lora_lab.model.base import builtin_llama_config, builtin_tokenizer, from_hub, package_model_dir

ALL_LINEAR = "all-linear"
"""PEFT's target_modules value for every linear layer but the output head."""

_QUERY = re.compile(r"(q|query|q_proj|query_proj)")
_VALUE = re.compile(r"(v|value|v_proj|value_proj)")
_FUSED = re.compile(r"qkv|query_key_value")


@dataclass
class Layout:
    """A model's adaptable linear layers, by full module name, sorted into attention, MLP and other."""

    model_type: str
    attention: list[str] = field(default_factory=list)
    mlp: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    conv1d: set[str] = field(default_factory=set)
    """Full names of the layers that are transformers ``Conv1D`` (weight stored as in x out)."""

    @property
    def all(self) -> list[str]:
        return self.attention + self.mlp + self.other

    def suffixes(self, chosen: list[str]) -> list[str]:
        """The shortest module-name suffixes that match exactly ``chosen`` among the model's
        layers, the way PEFT matches a list of names (a full name equal to, or ending in '.' +, one)."""
        everything = self.all
        out: list[str] = []
        for full in chosen:
            parts = full.split(".")
            for depth in range(1, len(parts) + 1):
                suffix = ".".join(parts[-depth:])
                matched = [n for n in everything if n == suffix or n.endswith("." + suffix)]
                if set(matched) <= set(chosen):
                    break
            if suffix not in out:
                out.append(suffix)
        return out

    def describe(self) -> str:
        """One line per group: what the model has, for error messages."""
        parts = []
        for label, group in (("attention", self.attention), ("MLP", self.mlp), ("other", self.other)):
            if group:
                parts.append(f"{label}: {', '.join(_short_names(group))}")
        return "; ".join(parts) or "no linear layers"


@dataclass
class TargetSet:
    """A resolved target set: what PEFT is given and which layers that wraps."""

    name: str
    peft_targets: list[str] | str
    """``LoraConfig.target_modules``: module-name suffixes, or 'all-linear'."""
    modules: list[str]
    """The suffixes of the layers it wraps (for reports and the docs' table)."""
    layers: list[str]
    """Full names of the wrapped layers."""
    fan_in_fan_out: bool
    """True when the wrapped layers are Conv1D (GPT-2 style), whose weight is stored transposed."""


def _short_names(full_names: list[str]) -> list[str]:
    return list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in full_names))


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.Linear, Conv1D))


def layout(model: torch.nn.Module) -> Layout:
    """Sort the model's linear layers (the output head excluded) into attention, MLP and other."""
    config = getattr(model, "config", None)
    out = Layout(model_type=str(getattr(config, "model_type", type(model).__name__)))
    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    modules = dict(model.named_modules())
    for full_name, module in modules.items():
        if not _is_linear(module) or module is head:
            continue
        parts = full_name.split(".")
        ancestors = [modules[".".join(parts[:i])] for i in range(1, len(parts))]
        if isinstance(module, Conv1D):
            out.conv1d.add(full_name)
        if any("attention" in type(a).__name__.lower() for a in ancestors):
            out.attention.append(full_name)
        elif any(isinstance(a, torch.nn.ModuleList) for a in ancestors):
            out.mlp.append(full_name)
        else:
            out.other.append(full_name)
    return out


def peft_default_targets(model_type: str) -> list[str] | None:
    """PEFT's default LoRA targets for a transformers model type (None when PEFT has none)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    targets = mapping.get(model_type)
    return list(targets) if targets else None


def fused_projections(found: Layout) -> list[str]:
    """Short names of attention layers that compute query, key and value together (PEFT's single
    default target for the model type, or a name with 'qkv' / 'query_key_value' in it)."""
    default = peft_default_targets(found.model_type) or ()
    return [n for n in _short_names(found.attention) if (n in default and len(default) == 1) or _FUSED.search(n)]


def _query_value(found: Layout) -> list[str] | None:
    """Full names of the separate query and value projections, or None when the model fuses them."""
    short = {n: n.rsplit(".", 1)[-1] for n in found.attention}
    default = peft_default_targets(found.model_type)
    if default is not None:
        chosen = [n for n in found.attention if short[n] in default]
        if len(default) >= 2 and {short[n] for n in chosen} == set(default):
            return chosen
        if default and all(t in short.values() for t in default):
            return None  # PEFT's default is one fused projection: no separate query and value
    query = [n for n in found.attention if _QUERY.fullmatch(short[n])]
    value = [n for n in found.attention if _VALUE.fullmatch(short[n])]
    if query and value:
        return [n for n in found.attention if n in query or n in value]
    return None


def resolve(model: torch.nn.Module, name: str, model_cfg: ModelConfig, found: Layout | None = None) -> TargetSet:
    """The target set ``name`` on ``model``: a set given in ``model.target_sets`` (checked against the
    layers the model has), else the set derived from the model; ``ConfigError`` when the model cannot
    express it, naming what it has."""
    found = found or layout(model)
    if name in model_cfg.target_sets:
        wanted = list(model_cfg.target_sets[name])
        layers = [n for n in found.all if any(n == w or n.endswith("." + w) for w in wanted)]
        missing = [w for w in wanted if not any(n == w or n.endswith("." + w) for n in found.all)]
        if missing:
            raise ConfigError(
                "lora.targets",
                name,
                f"a set whose modules {model_cfg.name} has; it lacks {', '.join(missing)} "
                f"(its linear modules: {', '.join(sorted(_short_names(found.all)))})",
            )
        return TargetSet(name, wanted, wanted, layers, bool(layers) and set(layers) <= found.conv1d)
    if name == "qv":
        layers = _query_value(found)
        if layers is None:
            fused = fused_projections(found)
            raise ConfigError(
                "lora.targets",
                "qv",
                f"attn, mlp or all_linear for {model_cfg.name} (model type {found.model_type}): its attention "
                f"has no separate query and value projections to adapt alone ({found.describe()}"
                + (f"; {', '.join(fused)} computes query, key and value in one layer" if fused else "")
                + "). Adapt "
                + (
                    f"the fused projection with lora.target_modules=[{', '.join(fused)}]"
                    if fused
                    else "layers by name with lora.target_modules=[...]"
                )
                + " (which adapts the keys too), or name your own set in model.target_sets",
            )
    elif name == "attn":
        layers = found.attention
    elif name == "mlp":
        layers = found.mlp
    elif name == "all_linear":
        layers = found.all
    else:
        raise ConfigError(
            "lora.targets",
            name,
            "one of "
            + ", ".join((*names.TARGET_SETS, *[s for s in model_cfg.target_sets if s not in names.TARGET_SETS])),
        )
    if not layers:
        raise ConfigError(
            "lora.targets",
            name,
            f"a set {model_cfg.name} has layers for (model type {found.model_type}: {found.describe()})",
        )
    suffixes = found.suffixes(layers)
    peft_targets: list[str] | str = ALL_LINEAR if name == "all_linear" else suffixes
    return TargetSet(name, peft_targets, suffixes, list(layers), set(layers) <= found.conv1d)


def for_trial(model: torch.nn.Module, lora: LoraSettings, model_cfg: ModelConfig) -> TargetSet:
    """What a trial's adapter wraps: ``lora.target_modules`` when given (checked against the model's
    layers), else the named set ``lora.targets``."""
    found = layout(model)
    if lora.target_modules:
        available = _short_names(found.all)
        wanted = list(lora.target_modules)
        missing = [w for w in wanted if not any(n == w or n.endswith("." + w) for n in found.all)]
        if missing:
            raise ConfigError(
                "lora.target_modules",
                wanted,
                f"names of linear modules of {model_cfg.name}: {', '.join(sorted(available))} "
                f"(not found: {', '.join(missing)})",
            )
        layers = [n for n in found.all if any(n == w or n.endswith("." + w) for w in wanted)]
        return TargetSet("custom", wanted, wanted, layers, set(layers) <= found.conv1d)
    return resolve(model, lora.targets, model_cfg, found)


def model_skeleton(model_cfg: ModelConfig) -> PreTrainedModel:
    """The configured model built from its config alone on the meta device: its modules, no weights
    read or allocated (a few milliseconds even for a 70B model)."""
    if model_cfg.source == "builtin":
        config = builtin_llama_config(model_cfg, builtin_tokenizer())
    elif model_cfg.source == "package":
        config = AutoConfig.from_pretrained(package_model_dir(model_cfg), local_files_only=True)
    else:
        config = from_hub(AutoConfig.from_pretrained, model_cfg, "model config")
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)


def target_sets_for(model_cfg: ModelConfig) -> dict[str, TargetSet | ConfigError]:
    """Every named set of the configured model, resolved without loading its weights: each set's
    ``TargetSet``, or the ``ConfigError`` that a trial asking for it would raise."""
    model = model_skeleton(model_cfg)
    found = layout(model)
    out: dict[str, TargetSet | ConfigError] = {}
    for name in dict.fromkeys((*names.TARGET_SETS, *model_cfg.target_sets)):
        try:
            out[name] = resolve(model, name, model_cfg, found)
        except ConfigError as exc:
            out[name] = exc
    return out

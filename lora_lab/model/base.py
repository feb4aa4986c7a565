"""The base model: tokenizer, loading, quantization, the device it runs on (a worker's GPU), and the
guard that a shared base stays as loaded.

The default ``tiny_llama`` is a small ``LlamaForCausalLM`` that lora_lab pretrained itself on the
cipher family (``python -m lora_lab.pretrain``), shipped in ``lora_lab/assets/tiny_llama/`` with its
character-level tokenizer. ``tiny_llama_scratch`` (source 'builtin') is the same architecture with
seeded random weights, saved once to a local cache directory. Both take the same ``from_pretrained``
path as a Hub model, so quantization (bitsandbytes) and adapters (PEFT) are exercised exactly as they
are for real models. The adapter on top lives in ``lora_lab.model.adapter``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import socket
import string
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from lora_lab.config import BASE_REWRITING_INITS, LoraSettings, ModelConfig, QuantConfig
from lora_lab.errors import BaseModelChangedError, ModelUnavailableError

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
BUILTIN_CHARS = " " + string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation


ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
"""Models shipped inside the package (model.source='package')."""


def package_model_dir(cfg: ModelConfig) -> Path:
    """The directory of a shipped model, checked to hold one."""
    target = ASSETS_DIR / str(cfg.pretrained)
    if not (target / "config.json").is_file():
        shipped = sorted(p.name for p in ASSETS_DIR.glob("*") if (p / "config.json").is_file())
        raise ModelUnavailableError(
            f"model.pretrained={cfg.pretrained!r} (model.source='package'): no shipped model of that name in "
            f"lora_lab/assets/ (shipped: {', '.join(shipped) or 'none'}). Rebuild tiny_llama with "
            f"`python -m lora_lab.pretrain`, or use model=tiny_llama_scratch."
        )
    return target


def cache_dir() -> Path:
    """Where built-in models are materialised: $LORA_LAB_CACHE, else ~/.cache/lora_lab."""
    return Path(os.environ.get("LORA_LAB_CACHE", Path.home() / ".cache" / "lora_lab"))


def device() -> torch.device:
    """The device trials run on: the first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def claim_gpu(worker: int) -> None:
    """Pin this worker to one GPU: SLURM (or the user) may already have set CUDA_VISIBLE_DEVICES;
    otherwise, on a multi-GPU box, worker i takes GPU i mod the GPU count."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "local" and os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        del os.environ["CUDA_VISIBLE_DEVICES"]  # submitit's local executor sets it empty when it assigns none
    if "CUDA_VISIBLE_DEVICES" in os.environ or os.environ.get("SLURM_STEP_GPUS"):
        return
    gpus = Path("/proc/driver/nvidia/gpus")  # counted without initialising CUDA, which would fix the choice
    count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    if count > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(worker % count)


def bf16_by_default() -> bool:
    """The rule behind every 'auto' precision and dtype: bf16 on a CUDA device that supports it, else
    fp32 (CPU matmuls in bf16 are slow on most CPUs, and fp16 without a GPU has no loss scaling)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' -> bf16 where bf16_by_default(), else fp32; other names map directly."""
    if name == "auto":
        return torch.bfloat16 if bf16_by_default() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def builtin_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII, built in memory (no download)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for ch in BUILTIN_CHARS:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, padding_side="right", **SPECIAL_TOKENS)


def _hub_failure(what: str, cfg: ModelConfig, exc: Exception) -> ModelUnavailableError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelUnavailableError(
        f"model.pretrained={cfg.pretrained!r} (model={cfg.name}): the {what} could not be loaded ({first}). "
        f"Hub models need their files in the local Hugging Face cache or internet access; this machine "
        f"may be offline. Download it once with `huggingface-cli download {cfg.pretrained}` where there is "
        f"a network, point model.pretrained at a local directory, or use the built-in model=tiny_llama."
    )


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (False when offline or HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def from_hub(loader, cfg: ModelConfig, what: str, **kwargs):
    """Load from the local cache first; go to the Hub only when it is reachable, so an offline
    machine gets a clear error at once instead of minutes of retries."""
    common = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **kwargs)
    try:
        return loader(cfg.pretrained, local_files_only=True, **common)
    except (OSError, ValueError) as exc:
        if Path(cfg.pretrained).exists() or not hub_reachable():
            raise _hub_failure(what, cfg, exc) from None
    try:
        return loader(cfg.pretrained, **common)
    except (OSError, ValueError) as exc:
        raise _hub_failure(what, cfg, exc) from None


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token set (padding is needed for batching)."""
    if cfg.source == "builtin":
        return builtin_tokenizer()
    if cfg.source == "package":
        return AutoTokenizer.from_pretrained(package_model_dir(cfg), local_files_only=True)
    tokenizer = from_hub(AutoTokenizer.from_pretrained, cfg, "tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def builtin_llama_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def materialize_builtin(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> Path:
    """Save the seeded random tiny Llama (and its tokenizer) once; later calls reuse the directory."""
    llama_config = builtin_llama_config(cfg, tokenizer)
    key = hashlib.sha256(
        json.dumps([llama_config.to_dict(), cfg.init_seed, BUILTIN_CHARS], sort_keys=True, default=str).encode()
    ).hexdigest()[:12]
    target = cache_dir() / "models" / f"{cfg.name}-{key}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = LlamaForCausalLM(llama_config)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)  # atomic: concurrent workers never see a half-written model
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another worker won the race
    return target


def bnb_config(quant: QuantConfig) -> BitsAndBytesConfig | None:
    """The bitsandbytes settings for a quant config (None when not quantizing)."""
    if quant.method == "none":
        return None
    if quant.method == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.method,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(quant.compute_dtype),
    )


def load_base_model(model_cfg: ModelConfig, quant: QuantConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The frozen base model on the trial device, quantized and prepared for k-bit training if asked."""
    quantization = bnb_config(quant)
    dtype = resolve_dtype(model_cfg.dtype) if quantization is None else resolve_dtype(quant.compute_dtype)
    load_args = dict(dtype=dtype, quantization_config=quantization, device_map={"": str(device())})
    if model_cfg.source == "builtin":
        model = AutoModelForCausalLM.from_pretrained(materialize_builtin(model_cfg, tokenizer), **load_args)
    elif model_cfg.source == "package":
        model = AutoModelForCausalLM.from_pretrained(package_model_dir(model_cfg), local_files_only=True, **load_args)
    else:
        model = from_hub(AutoModelForCausalLM.from_pretrained, model_cfg, "model", **load_args)
    model.config.use_cache = False
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=quant.gradient_checkpointing)
    for param in model.parameters():
        param.requires_grad_(False)
    keep_4bit_layout(model)
    _loaded[model] = fingerprint(model)
    return model


def keep_4bit_layout(model: torch.nn.Module) -> None:
    """Keep bitsandbytes from rewriting a shared 4-bit base during evaluation.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit``'s weight in place at its
    first no-grad forward in eval mode (a CPU kernel layout, the double-quantized scales expanded and
    rounded to bf16): the first trial's evaluation would change the base every later trial adapts.
    Its per-module switch ``support_avx512bf16_for_cpu`` is not a documented API, so bitsandbytes is
    pinned below its next minor release and tests/test_base_model.py fails loudly when the switch no
    longer keeps the layout."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def base_model_id(cfg: ModelConfig) -> str:
    """The base model's name as an adapter records it: the Hub id (``Qwen/Qwen2.5-0.5B``), the config's
    name for a local directory, ``lora_lab/<name>`` for a built-in or shipped model; never a path on this machine."""
    if cfg.source in ("builtin", "package") or not cfg.pretrained:
        return f"lora_lab/{cfg.name}"
    if Path(cfg.pretrained).expanduser().exists() or cfg.pretrained.startswith(("/", ".", "~")):
        return cfg.name
    return cfg.pretrained


def base_writes(lora: LoraSettings) -> list[str]:
    """The settings of ``lora`` that write to the base model they adapt, each as 'field=value: why';
    empty when the adapter leaves the base untouched (PEFT's default: only A and B train)."""
    writes = []
    if lora.method == "full":
        writes.append("lora.method=full: full fine-tuning trains every base weight")
    if lora.init_lora_weights in BASE_REWRITING_INITS:
        writes.append(
            f"lora.init_lora_weights={lora.init_lora_weights}: moves the principal directions "
            f"of the base weights into the adapter, rewriting the base weights"
        )
    if lora.bias != "none":
        writes.append(f"lora.bias={lora.bias}: trains the base model's biases")
    return writes


def base_for_trial(shared_base: PreTrainedModel, writes: list[str]) -> PreTrainedModel:
    """The base model one trial may use: ``shared_base`` itself when the trial leaves it alone
    (``writes`` empty), else a deep copy of it, so the trial's writes land in the copy and every
    later trial in the process still adapts the base as it was loaded. Any training that changes
    base weights (a LoRA setting in ``base_writes``, full fine-tuning) takes its model from here.

    The copy costs one more base model in memory for the trial's duration; a 4-bit base copies
    through bitsandbytes' own ``Params4bit.__deepcopy__`` (weights and quantization state)."""
    return copy.deepcopy(shared_base) if writes else shared_base


def _tensor_checksum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of the tensor's bit patterns read as integers: exact, so any changed element shows
    (a float sum could round a small change away), and deterministic on every device."""
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.detach().view(as_int).sum(dtype=torch.int64)


def fingerprint(model: torch.nn.Module) -> str:
    """A checksum of every weight of ``model`` (and, for a 4-bit base, its quantization scales):
    one integer reduction per tensor, a few milliseconds even for a billion-parameter model on a GPU."""
    names, sums = [], []
    with torch.no_grad():
        for name, param in model.named_parameters():
            names.append(name)
            sums.append(_tensor_checksum(param))
            absmax = getattr(getattr(param, "quant_state", None), "absmax", None)
            if isinstance(absmax, torch.Tensor):
                names.append(f"{name}.absmax")
                sums.append(_tensor_checksum(absmax))
    values = torch.stack([s.cpu() for s in sums]).tolist() if sums else []
    return hashlib.sha256(json.dumps(list(zip(names, values, strict=True))).encode()).hexdigest()


_loaded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Fingerprint of each shared base model when a trial first used it."""


def loaded_fingerprint(shared_base: PreTrainedModel, check_bare: bool = False) -> str:
    """The fingerprint of a shared base model as a trial first found it (taken once per model
    object). ``check_bare``: refuse to take it while an adapter is attached (PEFT wraps the base's
    own layers in place, so it would be the adapted model's)."""
    if shared_base not in _loaded:
        if check_bare and any(hasattr(module, "lora_A") for module in shared_base.modules()):
            raise RuntimeError("the base model's fingerprint was asked for while an adapter is attached")
        _loaded[shared_base] = fingerprint(shared_base)
    return _loaded[shared_base]


@contextmanager
def trial_base(shared_base: PreTrainedModel, writes: list[str]) -> Iterator[PreTrainedModel]:
    """The base model for one trial (``base_for_trial``), with the shared base checked against
    its fingerprint before and after the trial: ``BaseModelChangedError`` when it is not the
    model it was (a trial wrote to it), instead of later trials silently adapting another model."""
    reference = loaded_fingerprint(shared_base)
    if fingerprint(shared_base) != reference:
        raise BaseModelChangedError(
            "the shared base model is no longer the model that was loaded (its weight checksum "
            "changed before this trial started: an earlier trial that failed, or code outside "
            "lora_lab's trials, wrote to it), so this trial would not adapt the configured base "
            "model. Run the sweep again: a new process loads the base afresh."
        )
    failed = False
    try:
        yield base_for_trial(shared_base, writes)
    except BaseException:
        failed = True
        raise
    finally:
        if fingerprint(shared_base) != reference and not failed:
            raise BaseModelChangedError(
                "this trial changed the shared base model (its weight checksum differs after the "
                "trial), so later trials would adapt a different model than their saved adapters "
                f"claim. Settings that write to the base: {'; '.join(writes) or 'none known'}. "
                "Report this with the trial's overrides: the setting needs to be added to "
                "lora_lab.model.base.base_writes."
            )

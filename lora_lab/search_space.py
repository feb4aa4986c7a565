"""A sweep preset's search space: Optuna distributions, derived values and Hydra overrides.

Kept apart from ``lora_lab.sweep`` because it is pure (no model, no tracking): the part of a sweep
that can be checked instantly, before any trial runs.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import math
import operator
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from lora_lab.config import ParamSpec, SweepConfig
from lora_lab.errors import ConfigError
from lora_lab.names import SEED_KEY, TRIAL_GROUPS

SEED_PARAM = SEED_KEY
"""The config field that tells the seeds of one configuration apart (never searched: every
configuration runs with each of ``sweep.seeds`` seeds)."""

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_FUNCTIONS = {
    "min": min,
    "max": max,
    "round": round,
    "int": int,
    "float": float,
    "abs": abs,
    "sqrt": math.sqrt,
    "log2": math.log2,
}


def distribution(name: str, spec: ParamSpec) -> BaseDistribution:
    """Optuna distribution of one declared parameter."""
    if spec.type == "categorical":
        for choice in spec.choices:
            if not (choice is None or isinstance(choice, (bool, int, float, str))):
                raise ConfigError(
                    f"sweep.params.{name}.choices",
                    list(spec.choices),
                    "scalars only (name target-module sets, e.g. all_linear, not lists)",
                )
        return CategoricalDistribution(list(spec.choices))
    if spec.type == "int":
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))
    return FloatDistribution(float(spec.low), float(spec.high), log=spec.log, step=spec.step)


def distributions(sweep: SweepConfig) -> dict[str, BaseDistribution]:
    """Every searched dimension (the seed is not one: see ``SEED_PARAM``)."""
    return {name: distribution(name, spec) for name, spec in sweep.params.items()}


def grid(sweep: SweepConfig) -> dict[str, list[Any]]:
    """Every categorical choice of every parameter."""
    return {name: list(dist.choices) for name, dist in distributions(sweep).items()}


def grid_size(sweep: SweepConfig) -> int:
    """Number of grid points (configurations; each runs ``sweep.seeds`` times)."""
    return math.prod(len(choices) for choices in grid(sweep).values())


def grid_points(sweep: SweepConfig) -> list[dict[str, Any]]:
    """The grid's points in ``itertools.product`` order (the first parameter varies slowest); a sweep
    runs them in ``lora_lab.grid_order.spread_order``'s order instead."""
    space = grid(sweep)
    return [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]


def space_size(sweep: SweepConfig) -> int | None:
    """How many distinct configurations the search space holds: finite when every parameter is
    categorical (or an int range), None otherwise."""
    size = 1
    for dist in distributions(sweep).values():
        if isinstance(dist, CategoricalDistribution):
            size *= len(dist.choices)
        elif isinstance(dist, IntDistribution):
            size *= (dist.high - dist.low) // dist.step + 1
        else:
            return None
    return size


def suggest(trial: optuna.Trial, sweep: SweepConfig) -> dict[str, Any]:
    """Ask the trial for every searched value (an enqueued trial gets back its fixed values)."""
    values: dict[str, Any] = {}
    for name, dist in distributions(sweep).items():
        if isinstance(dist, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, list(dist.choices))
        elif isinstance(dist, IntDistribution):
            values[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            values[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return values


def _evaluate(node: ast.AST, values: dict[str, Any], expression: str) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, values, expression)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, (ast.Name, ast.Attribute)):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            name = ".".join([node.id, *reversed(parts)])
            if name in values:
                return values[name]
            raise ConfigError(
                "sweep.derived",
                expression,
                f"expressions over the sampled names ({', '.join(values) or 'none'}); '{name}' is not one of them",
            )
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](
            _evaluate(node.left, values, expression), _evaluate(node.right, values, expression)
        )
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand, values, expression)
        return -value if isinstance(node.op, ast.USub) else value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _FUNCTIONS[node.func.id](*(_evaluate(arg, values, expression) for arg in node.args))
    raise ConfigError(
        "sweep.derived", expression, "arithmetic (+ - * / // % **), numbers, sampled names and " + ", ".join(_FUNCTIONS)
    )


def evaluate_expression(expression: str, values: dict[str, Any]) -> Any:
    """Value of a derived-field expression such as 'alpha_over_r * lora.r', over sampled values."""
    try:
        tree = ast.parse(str(expression), mode="eval")
    except SyntaxError:
        raise ConfigError("sweep.derived", expression, "a Python arithmetic expression") from None
    return _evaluate(tree, values, expression)


def resolve(sweep: SweepConfig, sampled: dict[str, Any]) -> dict[str, Any]:
    """Sampled values plus derived ones, in declaration order (a derived value may use an earlier one)."""
    values = dict(sampled)
    for target, expression in sweep.derived.items():
        values[target] = evaluate_expression(expression, values)
    return values


def is_config_field(name: str) -> bool:
    """Whether a searched or derived name addresses a config field (else it is a free variable)."""
    return name.split(".", 1)[0] in TRIAL_GROUPS and "." in name


def to_overrides(values: dict[str, Any]) -> list[str]:
    """Hydra overrides ('lora.r=8') for the values that address config fields."""
    out = []
    for name, value in values.items():
        if not is_config_field(name):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # '16' suits int and float fields alike; '16.0' fails an int field
        if isinstance(value, str) and not value.isidentifier():
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = str(value).lower()
        out.append(f"{name}={value}")
    return out


def config_id(values: dict[str, Any], basis: str = "") -> str:
    """Identifier shared by the seeds of one configuration: a hash of its sampled values (derived
    values follow from them; a seed among the values is left out) and of ``basis``, the digest of
    everything else its trials are trained with (``lora_lab.definition.basis_of``; empty for a study
    made before definitions were kept, whose ids came from the sampled values alone)."""
    key: dict[str, Any] = {k: v for k, v in sorted(values.items()) if k != SEED_PARAM}
    if basis:
        key["lora_lab.definition"] = basis
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]

"""constraints.txt, the versions CI and README's commands install with, covers what pyproject.toml asks
for: every dependency and every dev-extra requirement (and what their requested extras pull in) is
pinned to one exact version that pyproject's own range allows, and no CUDA package is pinned."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python 3.11's tomllib")

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "constraints.txt"


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier  # one exact pin per line
        assert spec.operator == "==", f"constraints.txt: '{line}' is not an exact pin (name==version)"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def _extra_requirements(requirement: Requirement) -> list[Requirement]:
    """What ``name[extra]`` adds to ``name``'s own requirements, read from the installed distribution."""
    if not requirement.extras:
        return []
    out = []
    for line in metadata.requires(requirement.name) or []:
        extra_req = Requirement(line)
        if extra_req.marker is not None and any(extra_req.marker.evaluate({"extra": e}) for e in requirement.extras):
            if not extra_req.marker.evaluate({"extra": ""}):
                out.append(extra_req)
    return out


def test_every_pyproject_requirement_is_pinned_within_its_range():
    pins = _pins()
    missing, outside = [], []
    for requirement in _pyproject_requirements():
        for needed in [requirement, *_extra_requirements(requirement)]:
            name = canonicalize_name(needed.name)
            if name not in pins:
                missing.append(f"{needed.name}{needed.specifier}")
            elif not needed.specifier.contains(pins[name], prereleases=True):
                outside.append(f"{needed.name}{needed.specifier} (pinned {pins[name]})")
    assert not missing, (
        f"not pinned in constraints.txt: {', '.join(missing)}; run `bash tools/update_constraints.sh` "
        "(docs/dependencies.md)"
    )
    assert not outside, f"pinned outside pyproject.toml's range: {', '.join(outside)}"


def test_no_cuda_package_is_pinned():
    cuda = [name for name in _pins() if name.startswith(("nvidia-", "cuda-")) or name == "triton"]
    assert cuda == []


def test_the_install_commands_use_the_constraints():
    """README's two quick-start commands and CI install every package with ``-c constraints.txt``."""
    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("[start:quickstart]", 1)[1].split("[end:quickstart]", 1)[0]
    ci = (REPO / ".ci" / "run").read_text()
    commands = [line for line in quick_start.splitlines() if "pip install" in line]
    commands += [line for line in ci.splitlines() if line.strip().startswith("pip install")]
    assert len(commands) >= 4, commands
    for line in commands:
        for install in line.split("pip install")[1:]:
            assert "-c constraints.txt" in install.split("&&")[0], line

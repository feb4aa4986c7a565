"""The one packaging detail pyproject.toml cannot state: the package list.

Every folder of ``lora_lab`` is found (new subpackages and asset folders ship without an edit here),
and the repo's top-level ``conf/`` ships as ``lora_lab.conf`` (mapped in pyproject.toml), so an
installed lora_lab finds its configs. ``hydra_plugins`` (a namespace package: no ``__init__.py``) holds the
``slurm_gpu`` launcher, where Hydra looks for plugins. Everything else about the build lives in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

SKIP = ["*__pycache__*"]
PACKAGES = find_namespace_packages(include=["lora_lab", "lora_lab.*"], exclude=SKIP)
CONF_PACKAGES = ["lora_lab.conf"] + [
    f"lora_lab.conf.{name}" for name in find_namespace_packages(where="conf", exclude=SKIP)
]

setup(packages=PACKAGES + CONF_PACKAGES + ["hydra_plugins"])

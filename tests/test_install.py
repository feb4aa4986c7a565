"""A wheel install runs every command from any directory: the wheel is built from a copy of the source,
installed into a fresh virtualenv, and a trial, a sweep and a report run from a temporary directory
with no checkout on the path.

The fresh virtualenv sees this environment's site-packages through a ``.pth`` line (torch and the
other dependencies are not installed twice), but not its editable install of lora_lab: a ``.pth``
line adds a directory without running the ``.pth`` files inside it, so ``lora_lab`` can only come from
the wheel.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCE = ["lora_lab", "conf", "hydra_plugins", "pyproject.toml", "setup.py", "README.md"]
"""What a build reads (pyproject's readme included); copied so the build writes nothing into the checkout."""


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600):
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCE:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(dist), str(src)], cwd=src)
    (found,) = dist.glob("lora_lab-*.whl")
    return found


def test_wheel_holds_every_package_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (REPO / "conf").rglob("*.yaml"):
        assert f"lora_lab/conf/{path.relative_to(REPO / 'conf').as_posix()}" in names, path
    for path in (REPO / "lora_lab").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            assert f"lora_lab/{path.relative_to(REPO / 'lora_lab').as_posix()}" in names, path
    assert "hydra_plugins/lora_lab_slurm_launcher.py" in names  # the slurm_gpu launcher, where Hydra finds plugins
    assert not any(n.startswith(("conf/", "tests/")) for n in names)  # nothing top-level besides those two


@pytest.fixture(scope="module")
def venv_python(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv)
    python = venv / "bin" / "python"
    purelib = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv).stdout.strip()
    )
    shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "shared_site_packages.pth").write_text("\n".join(sorted(shared)) + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        cwd=venv,
    )
    return python


@pytest.mark.slow
def test_installed_wheel_runs_a_trial_a_sweep_and_a_report_from_any_directory(venv_python, tmp_path):
    work = tmp_path / "anywhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    where = _run(
        [str(venv_python), "-c", "import lora_lab.cli as c; print(c.__file__); print(c.CONFIG_DIR)"], cwd=work, env=env
    ).stdout.split()
    site = Path(
        _run(
            [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work, env=env
        ).stdout.strip()
    )
    assert Path(where[0]).is_relative_to(site) and Path(where[1]) == site / "lora_lab" / "conf", where

    short = ["train.max_steps=2", "train.eval_every=2", "train.eval_generate=0", "train.logging_steps=1"]
    commands = {
        "trial": [str(venv_python), "-m", "lora_lab.train", *short, "lora=qv"],
        "sweep": [str(venv_python), "-m", "lora_lab.sweep", "sweep=targets", "sweep.n_trials=2", *short],
    }
    stores = {"trial": tmp_path / "trial.db", "sweep": tmp_path / "mlflow.db"}  # one each: two processes
    procs = {  # creating one sqlite store at the same moment would race on its schema migration
        name: subprocess.Popen(
            cmd,
            cwd=work,
            env=dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{stores[name]}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, cmd in commands.items()
    }
    results = {name: (proc.wait(timeout=600), *proc.communicate()) for name, proc in procs.items()}
    for name, (code, out, err) in results.items():
        assert code == 0, (name, out[-2000:], err[-3000:])
    assert "eval loss" in results["trial"][1]
    assert "study targets: 2 complete" in results["sweep"][1], results["sweep"][1][-2000:]

    _run([str(venv_python), "-m", "lora_lab.report", "study=targets"], cwd=work, env=env)
    report = work / "reports" / "targets" / "report.md"
    assert report.is_file() and "targets" in report.read_text()
    assert (work / "sweeps" / "targets").is_dir()  # run state lands where the command ran

"""Loud checks of the undocumented internals lora_lab relies on, against the installed versions.

pyproject.toml pins each of these libraries below its next minor release; these tests say what
breaks, and where to look, when a new version changes what lora_lab assumed:

* MLflow's UI keeps saved runs views as experiment tags ``mlflow.sharedViewState.<id>`` holding a
  JSON envelope whose ``state`` is the runs page's UI state, chart cards and run grouping included
  (``lora_lab.mlflow_ui`` writes them; nothing of it is a documented API). Checked in the UI's own
  JavaScript bundle that the installed ``mlflow`` serves.
* ``lora_lab.slurm.launch`` re-implements hydra-submitit-launcher's ``BaseSubmititLauncher.launch``
  (to watch jobs with squeue) and calls the launcher as that method does.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from importlib.metadata import version
from pathlib import Path

import pytest

from lora_lab import mlflow_ui as ui


def _minor(dist: str) -> tuple[int, int]:
    major, minor = version(dist).split(".")[:2]
    return int(major), int(minor)


# -- MLflow's saved runs views ------------------------------------------------------------------

MLFLOW_TESTED = ((3, 17), (3, 18))
"""The MLflow minor releases whose UI these views were checked in (pyproject: mlflow>=3.17,<3.19)."""


@pytest.fixture(scope="module")
def mlflow_ui_bundle() -> str:
    import mlflow

    build = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    files = sorted(build.glob("*.js"))
    assert files, f"no UI bundle under {build}: this mlflow install serves no web UI to check"
    return "\n".join(f.read_text(errors="replace") for f in files)


def _string_list_holding(bundle: str, member: str) -> set[str]:
    """The JavaScript array literal of strings that holds ``member`` (the UI's lists of state fields)."""
    found = re.search(r'\[(?:"\w+",)*"' + member + r'"(?:,"\w+")*\]', bundle)
    assert found, f"the MLflow UI no longer lists the state field {member!r}"
    return set(json.loads(found.group(0)))


def _our_views() -> list[dict]:
    return ui.sweep_views([("eval_loss", "minimize")], ["lora.r", "alpha_over_r", "lora.lora_alpha"])


def test_mlflow_is_a_version_the_saved_views_were_checked_in():
    assert _minor("mlflow") in MLFLOW_TESTED, (
        f"mlflow {version('mlflow')} is installed; lora_lab.mlflow_ui writes the UI's saved-view state as "
        f"MLflow {MLFLOW_TESTED} read it. Check the views in this version's UI (python docs/screenshots.py), "
        "then widen MLFLOW_TESTED here and the mlflow pin in pyproject.toml"
    )


def test_the_ui_reads_saved_views_from_the_experiment_tags_lora_lab_writes(mlflow_ui_bundle):
    bundle = mlflow_ui_bundle
    assert f'"{ui.VIEW_TAG_PREFIX}"' in bundle, "saved views are no longer experiment tags mlflow.sharedViewState.*"
    assert "viewStateShareKey" in bundle, "the UI no longer opens a saved view from the viewStateShareKey link"
    # the envelope: {name, createdAt, updatedAt, state} with state a JSON string (experiment_tags writes it)
    assert re.search(r"JSON\.stringify\(\{name:\w+,createdAt:\w+,updatedAt:\w+,state:\w+\}\)", bundle), (
        "the UI writes its saved-view envelope differently from lora_lab.mlflow_ui.experiment_tags"
    )
    assert re.search(r'"string"!==typeof \w+\.state', bundle), "the envelope's state is no longer a JSON string"


def test_every_state_field_lora_lab_sets_is_one_the_ui_restores(mlflow_ui_bundle):
    ui_state = _string_list_holding(mlflow_ui_bundle, "compareRunCharts")  # the runs page's UI state
    facets = _string_list_holding(mlflow_ui_bundle, "orderByKey")  # its search facets
    for view in _our_views():
        unknown = set(view["state"]) - ui_state - facets
        assert not unknown, f"view {view['id']}: the MLflow UI restores no state field {sorted(unknown)}"


def test_columns_are_named_as_the_ui_names_them(mlflow_ui_bundle):
    """A view's columns, order and widths name a column ``<kind>.`<key>` `` (``mlflow_ui.column``), the
    run name ``attributes.`Run Name` ``."""
    assert re.search(r'=\(\w,\w\)=>\w\+"\.`"\+\w\+"`"', mlflow_ui_bundle), "the UI names its columns another way"
    assert 'RUN_NAME:"Run Name"' in mlflow_ui_bundle and ui.RUN_NAME_COLUMN == "attributes.`Run Name`"
    for view in _our_views():
        for name in view["state"]["columnOrder"]:
            assert re.fullmatch(r"(attributes|params|metrics|tags)\.`[^`]+`", name), name


def test_chart_cards_and_grouping_use_values_the_ui_knows(mlflow_ui_bundle):
    bundle = mlflow_ui_bundle
    trials, configs = _our_views()
    cards = trials["state"]["compareRunCharts"]
    for kind in {c["type"] for c in cards}:
        assert f'.{kind}="{kind}"' in bundle, f"the UI has no chart type {kind!r} any more"
    fields = {k for c in cards for k in c} | {k for c in cards for v in c.values() if isinstance(v, dict) for k in v}
    for field in sorted(fields):
        assert f"{field}:" in bundle or f".{field}" in bundle, f"the UI's chart cards no longer read {field!r}"
    group = configs["state"]["groupBy"]
    assert f'.Average="{group["aggregateFunction"]}"' in bundle, "the UI's run grouping lost the average aggregate"
    for key in group["groupByKeys"]:
        assert f'.Tag="{key["mode"]}"' in bundle, f"the UI's run grouping has no mode {key['mode']!r}"
    # the UI's own check of a stored groupBy: {aggregateFunction, groupByKeys: [{mode, groupByData}, ...]}
    assert re.search(r"Array\.isArray\(\w+\.groupByKeys\)", bundle) and "groupByData" in bundle, (
        "the UI stores its run grouping in another shape than lora_lab.mlflow_ui.config_view writes"
    )


# -- hydra-submitit-launcher's launch, re-implemented in lora_lab.slurm --------------------------

SUBMITIT_LAUNCHER_TESTED = ((1, 2),)
"""The hydra-submitit-launcher minor releases lora_lab.slurm.launch was written against (pyproject:
hydra-submitit-launcher>=1.2,<1.3)."""

LAUNCH_SHA256 = "488fd14083a6b5defddfd5ecacfb90fcc05b045dd8ffa8b780c02c6e18a8feb5"
"""sha256 of ``BaseSubmititLauncher.launch``'s source (whitespace collapsed) in 1.2.0, the method
``lora_lab.slurm.launch`` re-implements."""


def test_the_submitit_launcher_is_the_version_lora_lab_slurm_was_written_against():
    assert _minor("hydra-submitit-launcher") in SUBMITIT_LAUNCHER_TESTED, (
        f"hydra-submitit-launcher {version('hydra-submitit-launcher')} is installed; lora_lab.slurm.launch "
        f"re-implements the launch of {SUBMITIT_LAUNCHER_TESTED}: compare it with this version's, then widen the "
        "pin in pyproject.toml and SUBMITIT_LAUNCHER_TESTED here"
    )


def test_the_launch_lora_lab_slurm_re_implements_is_unchanged():
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    source = " ".join(inspect.getsource(BaseSubmititLauncher.launch).split())
    assert hashlib.sha256(source.encode()).hexdigest() == LAUNCH_SHA256, (
        "hydra-submitit-launcher's BaseSubmititLauncher.launch changed: lora_lab.slurm.launch re-implements it "
        "(executor set-up, parameter names, job arguments). Carry the change over, run the slurm tests, then "
        "record the new digest in LAUNCH_SHA256"
    )


def test_the_launcher_takes_the_job_arguments_lora_lab_slurm_passes(tmp_path):
    """slurm.launch submits ``launcher(overrides, "hydra.sweep.dir", idx, job id, singleton state)`` per job
    and reads ``launcher.params`` and ``launcher.config``."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
    from omegaconf import OmegaConf

    from hydra_plugins.lora_lab_slurm_launcher import LoraLabSlurmLauncher

    assert list(inspect.signature(BaseSubmititLauncher.__call__).parameters) == [
        "self",
        "sweep_overrides",
        "job_dir_key",
        "job_num",
        "job_id",
        "singleton_state",
    ]
    launcher = LoraLabSlurmLauncher(submitit_folder=str(tmp_path), max_num_timeout=3, partition="debug")
    assert launcher.params == {"submitit_folder": str(tmp_path), "max_num_timeout": 3, "partition": "debug"}
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    launcher.setup(hydra_context=None, task_function=print, config=config)
    assert launcher.config is config
    assert {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name"} <= set(
        OmegaConf.structured(BaseQueueConf).keys()
    )

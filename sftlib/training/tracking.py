"""Experiment trackers (`training.report_to`): which ones a run logs to, and how to open their dashboards.

Trackio and TensorBoard both write local files while a run trains, through transformers' callbacks, on
the main process only; neither needs a network. Trackio keeps one SQLite database per project under
$TRACKIO_DIR (default ~/.cache/huggingface/trackio); TensorBoard writes event files under
output_dir/runs/<time>_<host> (or $TENSORBOARD_LOGGING_DIR). `pip install 'sftlib[trackio]'` or
`'sftlib[tensorboard]'` installs them. Without `report_to`, sftlib reports to none.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
from pathlib import Path

from sftlib.config import RunConfig, load_config, sft_config_default

KNOWN = ("trackio", "tensorboard")


def trackers(cfg: RunConfig) -> list[str]:
    """The known trackers `training.report_to` names, in KNOWN's order ("all": those installed)."""
    report_to = cfg.training.get("report_to") or "none"
    names = {report_to} if isinstance(report_to, str) else set(report_to)
    if "all" in names:
        names |= {name for name in KNOWN if importlib.util.find_spec(name) is not None}
    return [name for name in KNOWN if name in names]


def tensorboard_logdir(cfg: RunConfig) -> Path:
    """The folder of the run's newest TensorBoard event files (transformers' TensorBoardCallback)."""
    if os.environ.get("TENSORBOARD_LOGGING_DIR"):
        return Path(os.environ["TENSORBOARD_LOGGING_DIR"]).expanduser()
    runs = cfg.output_dir / "runs"
    logged = sorted(runs.glob("*/events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    return logged[-1].parent if logged else runs


def trackio_project(cfg: RunConfig) -> str:
    """The Trackio project a run logs to: `training.project`, else TRL's default."""
    return cfg.training.get("project") or sft_config_default("project")


def trackio_run_name(project: str) -> str | None:
    """The newest run of `project` in the local Trackio store, or None where it holds none."""
    import trackio

    try:
        runs = trackio.Api().runs(project)
    except ValueError:  # no such project in $TRACKIO_DIR
        return None
    return runs[-1].name if len(runs) else None


def dashboard_hint(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> str | None:
    """One line: how to open the dashboard of the run `config` (with `overrides`) trained; None when it
    reports to neither Trackio nor TensorBoard."""
    cfg = load_config(config, overrides)
    commands = []
    for name in trackers(cfg):
        if name == "tensorboard":
            commands.append(f"tensorboard --logdir {shlex.quote(str(tensorboard_logdir(cfg)))}")
        else:
            project = trackio_project(cfg)
            store = os.environ.get("TRACKIO_DIR")
            prefix = f"TRACKIO_DIR={shlex.quote(store)} " if store else ""
            run = trackio_run_name(project)
            command = f"{prefix}trackio show --project {shlex.quote(project)}"
            commands.append(command + (f" (run {run})" if run else ""))
    return f"dashboard: {'; '.join(commands)}" if commands else None


def print_dashboard_hint(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> None:
    """Print `dashboard_hint`'s line, when the run reports to a tracker (notebook 03)."""
    hint = dashboard_hint(config, overrides)
    if hint:
        print(hint)

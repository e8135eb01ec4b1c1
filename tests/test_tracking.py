"""Experiment tracking, offline: `training.report_to: tensorboard | trackio` through `sftlib train`, and
through notebook 03 under notebook_launcher with two processes. Each run trains the tiny model for 3 steps,
and each test reads the loss back from the tracker's own files (TensorBoard's event files through its
EventAccumulator, Trackio's SQLite store in a temporary $TRACKIO_DIR) and compares it with the run's
log_history. The trackers come with sftlib's extras: `sftlib[tensorboard]`, `sftlib[trackio]`."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from sftlib.config import load_config
from sftlib.training import tracking

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
PROJECT = "sftlib-tracking"


def tracked(tmp_path: Path, report_to: str) -> list[str]:
    return [
        f"training.output_dir={tmp_path / 'model'}",
        f"training.max_steps={STEPS}",
        f"training.report_to={report_to}",
        f"training.project={PROJECT}",
    ]


def offline_env(tmp_path: Path) -> dict:
    """This environment, with Trackio's store in tmp_path and the hub switched off."""
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    env.pop("TENSORBOARD_LOGGING_DIR", None)
    return env


def sftlib_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sftlib", *args],
        cwd=ROOT, env=offline_env(tmp_path), capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def logged_losses(run_dir: Path) -> dict[int, float]:
    """step -> train loss, from the run's own log_history (run_info.json)."""
    history = json.loads((run_dir / "run_info.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def tensorboard_losses(logdir: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/loss")}


def trackio_losses(store: Path) -> dict[str, dict[int, float]]:
    """run name -> (global step -> train loss), read from the one project database in the store."""
    (database,) = store.glob("*.db")
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT run_name, metrics FROM metrics").fetchall()
    runs: dict[str, dict[int, float]] = {}
    for run, blob in rows:
        metrics = json.loads(blob)
        if "train/loss" in metrics:
            runs.setdefault(run, {})[int(metrics["train/global_step"])] = metrics["train/loss"]
    return runs


def test_the_demo_and_the_tiny_config_report_to_no_tracker():
    for name in ("demo.yaml", "tiny.yaml", "chat_lesson.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        assert tracking.trackers(cfg) == [], name
        assert tracking.dashboard_hint(ROOT / "configs" / name) is None


def test_report_to_all_means_the_installed_trackers_and_a_list_keeps_their_order():
    config = ROOT / "configs/tiny.yaml"
    assert tracking.trackers(load_config(config, ["training.report_to=all"])) == ["trackio", "tensorboard"]
    listed = load_config(config, ["training.report_to=[tensorboard, trackio]"])
    assert tracking.trackers(listed) == ["trackio", "tensorboard"]


def test_sftlib_train_logs_three_steps_of_loss_to_tensorboard_event_files(tmp_path):
    overrides = tracked(tmp_path, "tensorboard")
    proc = sftlib_cli(tmp_path, "train", "--config", "configs/tiny.yaml", *[f"--set={o}" for o in overrides])
    assert proc.returncode == 0, proc.stderr[-3000:]

    run = tmp_path / "model"
    (events,) = run.glob("runs/*/events.out.tfevents.*")
    losses = tensorboard_losses(events.parent)
    assert sorted(losses) == [1, 2, 3]
    expected = logged_losses(run)
    assert losses == pytest.approx(expected, rel=1e-6)  # event files hold float32
    hint = tracking.dashboard_hint(ROOT / "configs/tiny.yaml", overrides)
    assert hint == f"dashboard: tensorboard --logdir {events.parent}"


def test_sftlib_train_logs_three_steps_of_loss_to_a_local_trackio_store(tmp_path, monkeypatch):
    overrides = tracked(tmp_path, "trackio")
    proc = sftlib_cli(tmp_path, "train", "--config", "configs/tiny.yaml", *[f"--set={o}" for o in overrides])
    assert proc.returncode == 0, proc.stderr[-3000:]

    runs = trackio_losses(tmp_path / "trackio")
    assert len(runs) == 1
    ((name, losses),) = runs.items()
    assert losses == logged_losses(tmp_path / "model") and sorted(losses) == [1, 2, 3]
    # the hint names the store, the project and the run; trackio reads $TRACKIO_DIR when imported
    hint = subprocess.run(
        [sys.executable, "-c", "import sys; from sftlib.training import tracking; print(tracking.dashboard_hint(sys.argv[1], sys.argv[2:]))",
         "configs/tiny.yaml", *overrides],
        cwd=ROOT, env=offline_env(tmp_path), capture_output=True, text=True,
    )  # fmt: skip
    assert hint.returncode == 0, hint.stderr[-2000:]
    store = tmp_path / "trackio"
    assert (
        hint.stdout.strip() == f"dashboard: TRACKIO_DIR={store} trackio show --project {PROJECT} (run {name})"
    )


@pytest.mark.slow
def test_notebook_03_with_two_processes_logs_once_to_both_trackers_and_names_the_dashboards(tmp_path):
    out = tmp_path / "suite"
    overrides = tracked(tmp_path, "[trackio, tensorboard]")
    proc = sftlib_cli(
        tmp_path, "pipeline", "--config", "configs/tiny.yaml", "--out", str(out), "--only", "03",
        "-p", "NUM_PROCESSES", "2", *[f"--set={o}" for o in overrides],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "model"
    assert json.loads((run / "run_info.json").read_text())["world_size"] == 2
    expected = logged_losses(run)
    assert sorted(expected) == [1, 2, 3]

    # only rank 0 logs: one TensorBoard writer, one Trackio run
    (events,) = run.glob("runs/*/events.out.tfevents.*")
    assert tensorboard_losses(events.parent) == pytest.approx(expected, rel=1e-6)
    runs = trackio_losses(tmp_path / "trackio")
    assert list(runs.values()) == [expected]

    cells = nbformat.read(out / "03_train.ipynb", as_version=4).cells  # outputs' text joined into one string
    printed = "".join(
        o.get("text", "") for c in cells for o in c.get("outputs", []) if o.get("name") == "stdout"
    )
    (line,) = [line for line in printed.splitlines() if line.startswith("dashboard:")]
    (name,) = runs
    assert line == (
        f"dashboard: TRACKIO_DIR={tmp_path / 'trackio'} trackio show --project {PROJECT} (run {name}); "
        f"tensorboard --logdir {events.parent}"
    )

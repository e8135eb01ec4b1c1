"""Interrupted runs: resume after SIGKILL, a graceful stop on SIGINT/SIGTERM, complete checkpoints,
the NaN stop, and output folders that are never overwritten.

Training runs use the tiny model on 16 chat rows (4 steps per epoch at batch 4), in one torch
thread: the suite shares a few busy cores, where more threads only slow each step down.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sftlib import cli
from sftlib.errors import SftlibError
from sftlib.outputs import staging
from sftlib.training import checkpoints, guards

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

# Runs `sftlib ARGS...` with a callback that SIGKILLs the process right after checkpoint-STEP is
# saved (it is added after sftlib's own callbacks, so the checkpoint is already marked complete).
KILL_AFTER_SAVE = """
import os, signal, sys
import trl
from transformers import TrainerCallback

STEP = int(os.environ["KILL_AFTER_SAVE_STEP"])

class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == STEP:
            os.kill(os.getpid(), signal.SIGKILL)

original_train = trl.SFTTrainer.train

def train(self, *args, **kwargs):
    self.add_callback(KillAfterSave())
    return original_train(self, *args, **kwargs)

trl.SFTTrainer.train = train
from sftlib.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def chat_rows(path: Path, n: int = 16) -> Path:
    with path.open("w") as f:
        for i in range(n):
            msgs = [
                {"role": "user", "content": f"March {i + 1}, 2021"},
                {"role": "assistant", "content": f"2021-03-{i + 1:02d}"},
            ]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


def write_config(tmp_path: Path, name: str, **training) -> Path:
    """configs/tiny.yaml on local chat rows, training into tmp_path/name, with `training` changes."""
    raw = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    data = tmp_path / "chat.jsonl"
    if not data.exists():
        chat_rows(data)
    raw["model"]["max_seq_length"] = 64
    raw["dataset"].update(name=str(data), eval_split=None, max_samples=None)
    raw["training"].update(output_dir=str(tmp_path / name), disable_tqdm=True, **training)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def output_dir(config: Path) -> Path:
    return Path(yaml.safe_load(config.read_text())["training"]["output_dir"])


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "lora_weights" / "adapter_model.safetensors")


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def complete_steps(out: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in checkpoints.checkpoint_dirs(out) if checkpoints.is_complete(p)]


# --------------------------------------------------------------------------- resume after SIGKILL


def test_a_run_killed_after_a_checkpoint_resumes_to_the_weights_of_an_uninterrupted_run(
    tmp_path, capsys, caplog
):
    run = {"max_steps": 6, "save_strategy": "steps", "save_steps": 2}  # 1.5 epochs: resume crosses an epoch
    straight, killed = write_config(tmp_path, "straight", **run), write_config(tmp_path, "killed", **run)
    assert cli.main(["train", "--config", str(straight)]) == 0

    cmd = [sys.executable, "-c", KILL_AFTER_SAVE, "train", "--config", str(killed)]
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**ENV, "KILL_AFTER_SAVE_STEP": "2"}, capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    out = output_dir(killed)
    assert complete_steps(out) == [2] and not (out / "run_info.json").exists()

    # A checkpoint the kill cut short: copied, a file truncated, no marker. It must be skipped.
    half = out / "checkpoint-4"
    for f in (out / "checkpoint-2").iterdir():
        if f.name != checkpoints.MARKER:
            (half / f.name).parent.mkdir(exist_ok=True)
            (half / f.name).write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    caplog.set_level("INFO", logger="sftlib")
    assert cli.main(["train", "--config", str(killed), "--resume"]) == 0
    assert f"skipping {half}: it is incomplete" in caplog.text
    assert f"resuming from {out / 'checkpoint-2'}" in caplog.text
    assert json.loads((out / "run_info.json").read_text())["global_step"] == 6

    want, got = adapter(output_dir(straight)), adapter(out)
    assert want.keys() == got.keys()
    diff = max(float((want[k] - got[k]).abs().max()) for k in want)
    print(f"resume max |adapter difference| = {diff:.3g}")
    assert diff < 1e-4
    at_kill = load_file(out / "checkpoint-2" / "adapter_model.safetensors")
    assert any(not torch.equal(at_kill[k], got[k]) for k in got)  # steps 3-6 did train after the resume
    assert complete_steps(out) == [6, 4, 2]  # the cut-short checkpoint-4 was rewritten whole

    # safetensors only among the final artifacts (checkpoints hold the Trainer's optimizer/RNG state)
    pickles = [p for p in out.rglob("*") if p.suffix in staging.PICKLES and "checkpoint-" not in str(p)]
    assert not pickles


# --------------------------------------------------------------------------- graceful stop


def test_sigterm_saves_a_checkpoint_exits_non_zero_and_says_how_to_resume(tmp_path):
    config = write_config(tmp_path, "run", max_steps=500, save_strategy="steps", save_steps=2)
    out = output_dir(config)
    cmd = [sys.executable, "-m", "sftlib", "train", "--config", str(config)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not complete_steps(out):  # training is under way once the first checkpoint is complete
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    line = last_line(stderr)
    assert line.startswith("error: training stopped by SIGTERM at step "), line
    assert f"resume with `sftlib train --config {config} --resume`" in line
    assert "Traceback" not in stderr
    step = int(line.split("at step ")[1].split(";")[0])
    assert f"checkpoint saved in {out / f'checkpoint-{step}'}" in line
    assert complete_steps(out)[0] == step < 500
    assert not (out / "run_info.json").exists() and not (out / "lora_weights").exists()


def test_sigint_saves_a_checkpoint_at_the_end_of_the_step_and_restores_the_handlers(
    tmp_path, capsys, monkeypatch
):
    import trl
    from transformers import TrainerCallback

    class InterruptAtStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # a real signal, as Ctrl-C sends it

    original_train = trl.SFTTrainer.train

    def train(self, *args, **kwargs):
        self.add_callback(InterruptAtStep2())
        return original_train(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "train", train)
    config = write_config(tmp_path, "run", max_steps=50, save_strategy="no")
    out = output_dir(config)
    handler = signal.getsignal(signal.SIGINT)

    assert cli.main(["train", "--config", str(config)]) == 128 + signal.SIGINT
    line = last_line(capsys.readouterr().err)
    assert line.startswith("error: training stopped by SIGINT at step 3;"), line
    assert f"checkpoint saved in {out / 'checkpoint-3'}" in line  # saved although save_strategy is "no"
    assert f"`sftlib train --config {config} --resume`" in line
    assert complete_steps(out) == [3] and not (out / "run_info.json").exists()
    assert signal.getsignal(signal.SIGINT) is handler


def test_the_resume_hint_names_the_resolved_config_when_set_options_changed_the_run(tmp_path):
    from sftlib.config import load_config

    config = write_config(tmp_path, "run")
    assert guards.resume_command(load_config(config)) == f"sftlib train --config {config} --resume"
    changed = load_config(config, ["training.max_steps=9"])
    resolved = output_dir(config) / "resolved_config.yaml"
    assert guards.resume_command(changed) == f"sftlib train --config {resolved} --resume"


def test_the_resume_hint_names_the_resolved_config_when_the_users_file_no_longer_loads(tmp_path, caplog):
    from sftlib.config import load_config

    config = write_config(tmp_path, "run")
    cfg = load_config(config)
    resolved = output_dir(config) / "resolved_config.yaml"
    config.write_text("model: [unclosed\n")  # edited into invalid YAML while the run was going
    with caplog.at_level(logging.INFO, logger="sftlib"):
        assert guards.resume_command(cfg) == f"sftlib train --config {resolved} --resume"
    assert f"{config} no longer loads" in caplog.text
    config.unlink()
    assert guards.resume_command(cfg) == f"sftlib train --config {resolved} --resume"


# --------------------------------------------------------------------------- divergence


def test_a_nan_loss_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, capsys, monkeypatch
):
    import trl

    # Poison the loss a training step returns (after its backward pass), whichever loss path the
    # trainer takes (TRL's or the fast path's), so the guard is what must stop the run.
    original = trl.SFTTrainer.training_step

    def poisoned(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if self.state.global_step == 4 else loss  # the 5th step

    monkeypatch.setattr(trl.SFTTrainer, "training_step", poisoned)
    config = write_config(tmp_path, "run", max_steps=8, save_strategy="steps", save_steps=2)
    out = output_dir(config)

    assert cli.main(["train", "--config", str(config)]) == 1
    line = last_line(capsys.readouterr().err)
    assert line.startswith("error: the training loss became nan at step 5;"), line
    assert f"the last good checkpoint is {out / 'checkpoint-4'}" in line and "learning_rate" in line
    assert complete_steps(out) == [4, 2]
    good = load_file(out / "checkpoint-4" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in good.values())
    assert not (out / "run_info.json").exists() and not (out / "lora_weights").exists()


# --------------------------------------------------------------------------- complete checkpoints


def fake_checkpoint(out: Path, step: int, *, complete: bool) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x" * 100)
    (folder / "trainer_state.json").write_text("{}")
    if complete:
        checkpoints.mark_complete(folder, step)
    return folder


def test_only_complete_checkpoints_count_and_each_incomplete_one_is_skipped_with_a_warning(tmp_path, caplog):
    out = tmp_path / "out"
    fake_checkpoint(out, 2, complete=True)
    fake_checkpoint(out, 10, complete=True)
    truncated = fake_checkpoint(out, 12, complete=True)
    (truncated / "adapter_model.safetensors").write_bytes(b"x" * 50)  # marked, then cut short
    unmarked = fake_checkpoint(out, 14, complete=False)
    (out / "checkpoint-x").mkdir()  # not a checkpoint name: ignored

    assert [p.name for p in checkpoints.checkpoint_dirs(out)] == [
        "checkpoint-14",
        "checkpoint-12",
        "checkpoint-10",
        "checkpoint-2",
    ]
    assert checkpoints.resume_checkpoint(out) == str(out / "checkpoint-10")  # 10 > 2: by step, not by name
    assert f"skipping {unmarked}: it is incomplete" in caplog.text
    assert f"skipping {truncated}: it is incomplete" in caplog.text


def test_resume_without_a_complete_checkpoint_is_refused_with_a_fix(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SftlibError, match="holds no checkpoint-\\* folder") as err:
        checkpoints.resume_checkpoint(out)
    assert err.value.fix and "save_strategy" in err.value.fix
    fake_checkpoint(out, 3, complete=False)
    with pytest.raises(SftlibError, match="none of the 1 checkpoint folder\\(s\\)"):
        checkpoints.resume_checkpoint(out)


def test_rotation_deletes_only_complete_checkpoints_beyond_the_limit_and_keeps_the_best(tmp_path):
    out = tmp_path / "out"
    for step in (1, 2, 3, 4):
        fake_checkpoint(out, step, complete=True)
    fake_checkpoint(out, 5, complete=False)  # an incomplete one never pushes a complete one out
    checkpoints.rotate(out, keep=2, protect=out / "checkpoint-1")
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint-1",
        "checkpoint-3",
        "checkpoint-4",
        "checkpoint-5",
    ]


# --------------------------------------------------------------------------- never overwrite


@pytest.mark.parametrize(
    "finished_by", ["run_info.json", "model.safetensors", "lora_weights/adapter_model.safetensors"]
)
def test_training_into_a_finished_run_is_refused_by_the_cli_and_touches_nothing(
    tmp_path, capsys, finished_by
):
    config = write_config(tmp_path, "run")
    out = output_dir(config)
    (out / finished_by).parent.mkdir(parents=True, exist_ok=True)
    (out / finished_by).write_text("{}")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    assert cli.main(["train", "--config", str(config)]) == 1
    line = last_line(capsys.readouterr().err)
    assert line.startswith(f"error: {out} already holds a finished run"), line
    assert "--overwrite" in line and "--resume" in line
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # not even resolved_config.yaml


def test_training_into_an_interrupted_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    config = write_config(tmp_path, "run")
    fake_checkpoint(output_dir(config), 2, complete=True)
    assert cli.main(["train", "--config", str(config)]) == 1
    line = last_line(capsys.readouterr().err)
    assert "holds checkpoints of an unfinished run" in line and "--resume" in line


# --------------------------------------------------------------------------- final artifacts


def test_a_failed_write_leaves_the_target_as_it_was_and_no_staging_folder(tmp_path):
    import errno

    target = tmp_path / "final"
    target.mkdir()
    (target / "model.safetensors").write_text("old")

    def half_then_disk_full(folder: Path):
        (folder / "model.safetensors").write_text("new, half")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.safetensors"))

    with pytest.raises(OSError):
        staging.write_atomically(target, half_then_disk_full)
    assert (target / "model.safetensors").read_text() == "old"
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]


def test_saved_weights_are_reloaded_and_a_difference_is_an_error(tmp_path):
    from safetensors.torch import save_file

    weights = {"a.weight": torch.ones(3, 2), "b.weight": torch.zeros(4)}
    save_file(weights, tmp_path / "model.safetensors")
    assert staging.verify_safetensors(tmp_path, weights) == 2
    with pytest.raises(SftlibError, match="tensor b.weight .* differs from the trained weights"):
        staging.verify_safetensors(tmp_path, {**weights, "b.weight": torch.ones(4)})
    with pytest.raises(SftlibError, match="holds no model.safetensors"):
        staging.verify_safetensors(tmp_path / "empty", weights)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)  # truncated on disk
    with pytest.raises(SftlibError, match="cannot be read back"):
        staging.verify_safetensors(tmp_path, weights)

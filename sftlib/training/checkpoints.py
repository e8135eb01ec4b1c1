"""Checkpoints that count only once complete, the newest one to resume from, and rotation.

transformers' Trainer writes `checkpoint-N/` file by file under its final name, so a run killed
mid-save leaves a folder that looks like a checkpoint but is not one. `CompleteCheckpoints`
writes a marker (`sftlib_complete.json`, listing every file and its size) after the Trainer has
finished the folder and flushed it to disk; only marked folders whose files still match count.
It also takes over `save_total_limit`, so an old checkpoint is deleted only after the new one
is marked.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from transformers import TrainerCallback

from sftlib.errors import SftlibError
from sftlib.files import write_atomically
from sftlib.outputs.layout import CLI, Controls, checkpoint_dirs

log = logging.getLogger("sftlib")

MARKER = "sftlib_complete.json"


def is_complete(checkpoint: str | Path) -> bool:
    """True when the marker exists and every file it lists is there with its recorded size."""
    checkpoint = Path(checkpoint)
    try:
        files = json.loads((checkpoint / MARKER).read_text())["files"]
        return all((checkpoint / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def latest_complete(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, warning about each newer incomplete one it skips."""
    for checkpoint in checkpoint_dirs(output_dir):
        if is_complete(checkpoint):
            return checkpoint
        log.warning("warning: skipping %s: it is incomplete (the run stopped while writing it).", checkpoint)
    return None


def resume_checkpoint(output_dir: str | Path, how: Controls = CLI) -> str:
    """The folder a resumed run continues from, or an error saying why there is none (`how` names the
    controls of what the user ran)."""
    out = Path(output_dir)
    found = checkpoint_dirs(out)
    if not found:
        raise SftlibError(
            f"there is no run to resume: {out} holds no checkpoint-* folder to continue from.",
            f"{how.without_resume} to start afresh, and set training.save_strategy: steps "
            "(with training.save_steps) so that a run can be resumed.",
        )
    latest = latest_complete(out)
    if latest is None:
        raise SftlibError(
            f"there is no run to resume: none of the {len(found)} checkpoint folder(s) in {out} is complete.",
            f"{how.without_resume} ({how.verb} {how.overwrite} too, to clear the folder) to start afresh.",
        )
    log.info("resuming from %s", latest)
    return str(latest)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_complete(checkpoint: str | Path, global_step: int) -> None:
    """Flush the checkpoint's files to disk, then write the marker atomically (temp + rename)."""
    checkpoint = Path(checkpoint)
    files = {}
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file() and path.name != MARKER and not path.name.startswith(f".{MARKER}"):
            _fsync(path)
            files[str(path.relative_to(checkpoint))] = path.stat().st_size
    write_atomically(checkpoint / MARKER, json.dumps({"global_step": global_step, "files": files}, indent=1))
    _fsync(checkpoint)


def unmark(checkpoint: str | Path) -> None:
    (Path(checkpoint) / MARKER).unlink(missing_ok=True)


def rotate(output_dir: str | Path, keep: int | None, protect: str | Path | None = None) -> None:
    """Delete the oldest checkpoints beyond `keep`, counting and deleting only complete ones.

    The newest complete checkpoint and `protect` (the best model's) are never deleted, and an
    incomplete folder never pushes a complete one out.
    """
    if not keep or keep <= 0:
        return
    complete = [p for p in checkpoint_dirs(output_dir) if is_complete(p)]
    protected = {complete[0].resolve()} if complete else set()
    if protect:
        protected.add(Path(protect).resolve())
    for stale in complete[keep:]:
        if stale.resolve() not in protected:
            shutil.rmtree(stale, ignore_errors=True)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CompleteCheckpoints(TrainerCallback):
    """Marks each checkpoint complete after the Trainer saved it; rotates only complete ones.

    Build it with the run's `save_total_limit`; the Trainer's own is None (`sftlib.training.sft_args.sft_config`),
    because the Trainer rotates before this callback runs, which could delete the last complete
    checkpoint while the new one is still unmarked.
    """

    def __init__(self, save_total_limit: int | None):
        self.save_total_limit = save_total_limit
        self.last_saved: Path | None = None

    def _folder(self, args, state) -> Path:
        return Path(args.output_dir) / f"checkpoint-{state.global_step}"

    def on_step_end(self, args, state, control, **kwargs):
        # A checkpoint-N that exists before step N saves is a leftover; it is about to be rewritten.
        if state.is_world_process_zero:
            unmark(self._folder(args, state))

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save and state.is_world_process_zero:
            unmark(self._folder(args, state))  # the same step may be saved a second time at epoch end

    def on_save(self, args, state, control, **kwargs):
        _barrier()  # every rank has written its part (its RNG state) before rank 0 marks the folder
        folder = self._folder(args, state)
        if state.is_world_process_zero:
            mark_complete(folder, state.global_step)
            rotate(args.output_dir, self.save_total_limit, state.best_model_checkpoint)
        self.last_saved = folder
        _barrier()


def install(trainer, save_total_limit: int | None) -> CompleteCheckpoints:
    """Add `CompleteCheckpoints` to `trainer`, rotating to `save_total_limit` (the config's) itself."""
    if trainer.args.save_total_limit is not None:
        raise SftlibError(
            "the trainer rotates checkpoints itself (save_total_limit is set in its SFTConfig), which could "
            "delete the last complete checkpoint.",
            "build the SFTConfig with sftlib.training.sft_args.sft_config, which leaves rotation to sftlib.",
        )
    callback = CompleteCheckpoints(save_total_limit)
    trainer.add_callback(callback)
    return callback

"""What stops a training run early, and how: a stop signal, or a loss that is no longer finite.

- SIGINT / SIGTERM: the step in progress finishes, a checkpoint is saved, training stops and the
  run ends with `Interrupted` (a non-zero exit that says how to resume). A second signal stops at
  once, without saving.
- A NaN or inf loss ends the run with `Diverged`, naming the step, before the optimizer applies
  that step: no checkpoint is written from it, so the last complete one stays the last good one.

`guarded(trainer, cfg)` installs the signal handlers, the `StopOnSignal` callback and
`checkpoints.CompleteCheckpoints` around `trainer.train`; `FiniteLoss` is given to the trainer when it
is built (`sftlib.training.trainer.build_trainer(..., loss_check=FiniteLoss(cfg))`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path

from transformers import TrainerCallback

from sftlib.errors import Diverged, Interrupted, SftlibError
from sftlib.training import checkpoints

log = logging.getLogger("sftlib")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def resume_command(cfg) -> str:
    """The command that continues this run: its own config file, or the resolved one when --set changed it."""
    from sftlib.config import load_config

    resolved = cfg.output_dir / "resolved_config.yaml"
    if not cfg.config_file:
        return f"sftlib train --config {resolved} --resume"
    try:
        unchanged = load_config(cfg.config_file).to_dict() == cfg.to_dict()
    except (SftlibError, OSError) as exc:
        # The user's file changed into something invalid (or went away) since the run started.
        log.info("the resume hint names %s: %s no longer loads (%s)", resolved, cfg.config_file, exc)
        unchanged = False
    if unchanged:
        return f"sftlib train --config {cfg.config_file} --resume"
    return f"sftlib train --config {resolved} --resume"


class StopOnSignal(TrainerCallback):
    """Turns SIGINT/SIGTERM into "save a checkpoint after this step, then stop"."""

    def __init__(self):
        self.signum: int | None = None

    def request(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # a second signal: stop now, without a checkpoint
        self.signum = signum
        log.warning(
            "%s received: saving a checkpoint after this step, then stopping (send it again to stop at once).",
            signal.Signals(signum).name,
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self._stop_requested(args):
            control.should_save = True
            control.should_training_stop = True
        return control

    def _stop_requested(self, args) -> bool:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.signum is not None
        # Every rank must stop (and save) at the same step, or the others hang in the next collective.
        flag = torch.tensor([self.signum or 0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if self.signum is None and flag.item():
            self.signum = int(flag.item())
        return bool(flag.item())


@contextlib.contextmanager
def _signal_handlers(handler):
    if threading.current_thread() is not threading.main_thread():
        yield  # signal.signal only works in the main thread; leave the defaults in place
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class FiniteLoss:
    """Raises `Diverged` for a step loss that is NaN or inf, before the optimizer applies that step.

    `sftlib.training.trainer.SftlibTrainer` calls it with each step's loss (its `loss_check`); the message
    names the step, the last good checkpoint and how to continue.
    """

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self, loss, step: int) -> None:
        import torch

        if bool(torch.isfinite(loss).all()):
            return
        good = checkpoints.latest_complete(self.cfg.output_dir)
        kept = (
            f"the last good checkpoint is {good}" if good is not None else "no checkpoint had been saved yet"
        )
        value = "nan" if bool(torch.isnan(loss).any()) else "inf"
        raise Diverged(
            f"the training loss became {value} at step {step}; training stopped before applying that step, "
            f"and {kept}.",
            "lower training.learning_rate, keep training.max_grad_norm > 0, or use float32 / bf16 instead of "
            f"fp16; then start again with --overwrite, or continue with `{resume_command(self.cfg)}`.",
            step,
        )


@contextlib.contextmanager
def guarded(trainer, cfg):
    """Run the `with` body (`trainer.train(...)`) with complete checkpoints and the stop signals.

    Raises `Interrupted` after the body if a stop signal arrived. (The loss check, `FiniteLoss`, is
    the trainer's own: `sftlib.training.trainer.build_trainer(..., loss_check=FiniteLoss(cfg))`.)
    """
    marks = checkpoints.install(trainer, cfg.training.get("save_total_limit"))
    stop = StopOnSignal()
    trainer.add_callback(stop)
    fix = f"resume with `{resume_command(cfg)}`."
    try:
        with _signal_handlers(stop.request):
            yield
    except KeyboardInterrupt:
        good = checkpoints.latest_complete(cfg.output_dir)
        where = f"the last complete checkpoint is {good}" if good else "no checkpoint was saved"
        raise Interrupted(
            f"training stopped at once at step {trainer.state.global_step}; {where}.",
            fix if good else "start again with --overwrite.",
            stop.signum or signal.SIGINT,
        ) from None
    if stop.signum is not None:
        saved = (
            marks.last_saved if marks.last_saved is not None else checkpoints.latest_complete(cfg.output_dir)
        )
        raise Interrupted(
            f"training stopped by {signal.Signals(stop.signum).name} at step {trainer.state.global_step}; "
            f"checkpoint saved in {Path(saved) if saved else '(none)'}.",
            fix,
            stop.signum,
        )

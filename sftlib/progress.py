"""Progress lines for long work: training steps and generation batches, one plain line at a time.

A line names the work, how far it is, and the time left, e.g.
`  [train] 8/40 steps (20%) · loss 1.234 · 512 tokens/s · 0:10 so far · 0:42 left`. Plain lines (no
carriage returns) read the same in a terminal, a notebook cell and a log file. Inside a notebook kernel they go
to stdout, where `sftlib pipeline` and `sftlib demo` pick them out of the kernel's output and pass them
on to their terminal (`is_progress`); elsewhere to stderr, apart from a command's results.
"""

from __future__ import annotations

import re
import sys
import time

_LINE = re.compile(r"  \[(train|generate)\b")
EVERY = 0.1  # a line at least every tenth of the work


def is_progress(line: str) -> bool:
    """Whether `line` is a progress line (what the pipeline passes from a kernel to its terminal)."""
    return _LINE.match(line) is not None


def stream():
    """stdout in a notebook kernel (the cell shows it, the pipeline reads it), stderr elsewhere."""
    return sys.stdout if "ipykernel" in sys.modules else sys.stderr


def clock(seconds: float) -> str:
    """`1:05` or `1:02:03`."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Lines:
    """`  [KIND] DONE/TOTAL UNIT (P%) · ... · M:SS so far · M:SS left`, printed for the first item
    done, at every tenth of `total` and at the end. The time left is the time per item so far, times
    the items left; `start` items were done before (a resumed run)."""

    def __init__(self, kind: str, total: int, unit: str = "", start: int = 0):
        self.kind, self.total, self.unit, self.start = kind, max(total, 1), unit, start
        self.t0 = time.perf_counter()
        self.shown = self.tenth(start)

    def tenth(self, done: int) -> int:
        return int(done / self.total / EVERY + 1e-9)

    def say(self, text: str) -> None:
        print(f"  [{self.kind}] {text}", file=stream(), flush=True)

    def due(self, done: int) -> bool:
        """Whether `done` is the first item, the last, or crosses into a tenth not yet shown."""
        return done == self.start + 1 or done >= self.total or self.tenth(done) > self.shown

    def update(self, done: int, *details: str) -> None:
        if not self.due(done):
            return
        self.shown = self.tenth(done)
        elapsed = time.perf_counter() - self.t0
        left = elapsed / (done - self.start) * (self.total - done) if done > self.start else 0.0
        unit = f" {self.unit}" if self.unit else ""
        parts = [f"{done}/{self.total}{unit} ({done / self.total:.0%})", *details, f"{clock(elapsed)} so far"]
        parts.append(f"{clock(left)} left" if done < self.total else "done")
        self.say(" · ".join(parts))


def training_lines():
    """A TrainerCallback printing a line per tenth of a run's optimizer steps: the step, the newest
    logged loss, real tokens per second (TRL's `num_tokens` count, over the newest logging window) and
    the time left. Main process only. (transformers is imported here: the pipeline reads this module without it.)"""
    from transformers import TrainerCallback

    class TrainingLines(TrainerCallback):
        def __init__(self):
            self.lines: Lines | None = None
            self.last_count = (0.0, 0.0)  # (time, TRL's num_tokens) of the newest log
            self.tokens_per_second: float | None = None
            self.pending: int | None = None  # a due step whose line waits for the loss it logs

        def on_train_begin(self, args, state, control, **kwargs):
            self.lines = Lines("train", state.max_steps, "steps", start=state.global_step)
            self.lines.say(f"{state.max_steps - state.global_step} optimizer steps to run")
            counts = [h["num_tokens"] for h in state.log_history if "num_tokens" in h]
            self.last_count = (self.lines.t0, float(counts[-1]) if counts else 0.0)

        def on_step_end(self, args, state, control, **kwargs):
            if self.lines is None or not self.lines.due(state.global_step):
                return
            if control.should_log:  # the Trainer logs this step's loss next: print then
                self.pending = state.global_step
            else:
                self.show(state)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:  # tokens/s over the newest logging window
                now, count = time.perf_counter(), float(logs["num_tokens"])
                before, counted = self.last_count
                counted = counted if count >= counted else 0.0  # a resumed run counts again from 0
                if now > before:
                    self.tokens_per_second = (count - counted) / (now - before)
                self.last_count = (now, count)
            if self.pending == state.global_step:
                self.pending = None
                self.show(state)

        def show(self, state) -> None:
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            details = [f"loss {losses[-1]:.4g}"] if losses else []
            if self.tokens_per_second is not None:
                details.append(f"{self.tokens_per_second:.0f} tokens/s")
            self.lines.update(state.global_step, *details)

    return TrainingLines()

"""Where a training step's time goes, from torch.profiler: `sftlib bench --profile-steps N`.

Each profiled operator's own time (not its children's) goes into one category:

- matmul: aten::mm / addmm / bmm and friends, forward and backward (outside the LM head);
- attention: the scaled-dot-product kernels, forward and backward, and everything under
  `sftlib::attention` (sftlib.models.attention's per-example attention);
- LM head + loss (TRL): everything under TRL's fused LM head, forward and backward, and every op on
  the vocabulary dimension (the gradient of a tied embedding);
- dtype casts: copies and casts (autocast's per-op weight casts show here);
- elementwise / other ops: every other aten op (norms, activations, residuals, LoRA scaling);
- autograd engine: the backward nodes' own bookkeeping;
- optimizer: everything under `Optimizer.step` / `zero_grad`;
- Python / framework: wall time not inside any op (Trainer, TRL, PEFT and transformers Python code,
  data collation).
"""

from __future__ import annotations

import collections
import time
from typing import Any

from transformers import TrainerCallback

CATEGORIES = (
    "matmul",
    "attention",
    "LM head + loss (TRL)",
    "elementwise / other ops",
    "dtype casts",
    "autograd engine",
    "optimizer",
    "Python / framework",
)
MATMUL = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::baddbmm", "aten::_mkl_linear"}
# Batched matmuls and softmax: in these decoder models only attention uses them (linear layers run aten::mm),
# so the backward of sftlib.models.attention's matmul form, which runs outside its profiler range, counts here.
ATTENTION = {"aten::bmm", "aten::_softmax", "aten::_softmax_backward_data"}
CASTS = {"aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous"}
# TRL 1.16 offers no public hook around its fused LM head (add_fused_lm_head): its autograd function
# shows in the profile under this name, forward and backward ("...Backward").
FUSED_HEAD = "ChunkedLogProbFunction"


def category(event, vocab_size: int) -> str | None:
    """The category of one profiler event (None: a range whose own time is Python, not an op)."""
    name = event.name
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer."):
            return "optimizer"
        if parent.name.startswith(FUSED_HEAD):
            return "LM head + loss (TRL)"
        if parent.name == "sftlib::attention":
            return "attention"
        parent = parent.cpu_parent
    if name.startswith("Optimizer."):
        return "optimizer"
    if name.startswith(FUSED_HEAD):
        return "LM head + loss (TRL)"
    if name.startswith("autograd::") or "Backward" in name:
        return "autograd engine"
    if not name.startswith("aten::"):
        return None
    if any(dim == vocab_size for shape in (event.input_shapes or []) for dim in (shape or [])):
        return "LM head + loss (TRL)"
    if name in MATMUL:
        return "matmul"
    if "scaled_dot_product" in name or "flash_attention" in name or name in ATTENTION:
        return "attention"
    if name in CASTS:
        return "dtype casts"
    return "elementwise / other ops"


def breakdown(events, wall_seconds: float, vocab_size: int) -> dict[str, Any]:
    """{category: share of the wall time} plus the seconds and the top operators of each category."""
    seconds: collections.Counter = collections.Counter()
    ops: collections.Counter = collections.Counter()
    for event in events:
        cat = category(event, vocab_size)
        if cat is not None:
            seconds[cat] += event.self_cpu_time_total / 1e6
            ops[(cat, event.name)] += event.self_cpu_time_total / 1e6
    seconds["Python / framework"] = max(0.0, wall_seconds - sum(seconds.values()))
    return {
        "wall_seconds": round(wall_seconds, 3),
        "share": {cat: round(seconds[cat] / wall_seconds, 3) for cat in CATEGORIES},
        "seconds": {cat: round(seconds[cat], 3) for cat in CATEGORIES},
        "top_ops": [
            {"category": cat, "op": name, "seconds": round(s, 3)} for (cat, name), s in ops.most_common(12)
        ],
    }


class ProfileSteps(TrainerCallback):
    """Profiles optimizer steps `first` .. `first + count - 1` (1-based); `result` holds the breakdown."""

    def __init__(self, first: int, count: int, vocab_size: int):
        self.first, self.count, self.vocab_size = first, count, vocab_size
        self.profiler = None
        self.result: dict[str, Any] | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.first:
            import torch

            self.profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
            )
            self.profiler.start()
            self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None and state.global_step == self.first + self.count - 1:
            wall = time.perf_counter() - self.start
            self.profiler.stop()
            self.result = {"steps": self.count, **breakdown(self.profiler.events(), wall, self.vocab_size)}
            self.profiler = None


def format_breakdown(name: str, result: dict[str, Any]) -> str:
    shares = "  ".join(f"{cat} {share:.0%}" for cat, share in result["share"].items())
    return f"{name} profile ({result['steps']} steps, {result['wall_seconds']:.1f} s): {shares}"

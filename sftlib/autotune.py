"""Run-time choices made by measurement on the machine that trains: precision and pass size.

The CPU under a user's run may not be the one sftlib was developed on: bf16 is several times faster
than fp32 where the CPU has avx512_bf16/AMX and several times slower where it is emulated, and the
best pass size depends on caches and cores. So both are timed where the run starts, and a config value overrides either.

- Precision: the model's own linear layers (forward and input-gradient matmuls at the pass size) are
  timed in bf16 and in fp32 before training; the faster wins. Timed on the layers' shapes, not on a
  whole pass, because a pass in the other precision would need a second copy of the weights.
- Pass size: the first optimizer steps run their passes at candidate sizes in turn (each step is
  still one optimizer step on the same examples, so only float rounding changes); after one untimed
  step, each candidate is timed on TIMED_STEPS steps, and the smallest size within `NEAR_BEST` of the
  fastest is kept for the rest of the run.
- Candidates are bounded by memory: a pass holds at most as many tokens as one configured micro-batch
  can (per_device_train_batch_size x max_seq_length), and its activations, measured per token on two
  short forward passes, at most the weights' size as loaded and half the free memory. The same
  measurement decides activation checkpointing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

log = logging.getLogger("sftlib")

MEASURE_TOKENS = 64  # length of the forward pass that measures activation memory
# A candidate within 5% of the fastest counts as as fast: the smaller pass holds less memory.
NEAR_BEST = 0.95
TIMED_STEPS = 2  # timed steps per candidate, after one untimed first step
FIRST_PASS_TOKENS = 128  # the smallest candidate pass; larger ones double up to the budget
MAX_CANDIDATES = 3  # with TIMED_STEPS, the first 7 steps are timing steps


# --------------------------------------------------------------------------- precision


def time_precisions(model, tokens: int, device: str, weight_grads: bool) -> dict[str, float]:
    """{"bf16": s, "fp32": s}: seconds the model's linear layers take for a pass of `tokens` tokens."""
    from sftlib.matmul import linear_shapes, model_matmul_seconds

    shapes = linear_shapes(model)
    return {
        name: round(model_matmul_seconds(shapes, tokens, dtype, device, weight_grads), 5)
        for name, dtype in (("bf16", "bfloat16"), ("fp32", "float32"))
    }


def faster(timings: dict[str, float]) -> str:
    return min(timings, key=timings.get)


def cast_weights(model, dtype, frozen_only: bool = True) -> int:
    """Store the model's parameters in `dtype` (only those that do not train, with `frozen_only`).

    Only parameters: buffers (rotary frequencies) keep their precision, and tied weights, being one
    parameter, stay tied. Returns how many were cast.
    """
    cast = 0
    for param in model.parameters():
        if (param.requires_grad and frozen_only) or not param.is_floating_point() or param.dtype == dtype:
            continue
        param.data = param.data.to(dtype)
        cast += 1
    return cast


# --------------------------------------------------------------------------- pass size


def pass_candidates(whole_step: int, cap_tokens: int) -> list[int]:
    """Candidate pass sizes in tokens, the MAX_CANDIDATES largest of: FIRST_PASS_TOKENS doubled while below
    both `whole_step` (the most tokens a step can hold) and `cap_tokens`, then the whole step if it fits
    the cap. A pass always holds at least one whole example, so a size below an example's length means
    one example per pass."""
    sizes = [FIRST_PASS_TOKENS]
    while sizes[-1] * 2 < whole_step and sizes[-1] * 2 <= cap_tokens:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] < whole_step <= cap_tokens:
        sizes.append(whole_step)
    return sizes[-MAX_CANDIDATES:]


@dataclasses.dataclass
class PassTuner:
    """Times candidate pass sizes on the first optimizer steps, then keeps one.

    The first step is not timed (allocator and kernel warm-up); then step k uses candidate
    (k - 1) % len(candidates), each TIMED_STEPS times; `chosen` is then the smallest candidate whose
    best tokens/s is within NEAR_BEST of the fastest's. `tuning_steps(n)` says how many steps that takes.
    """

    candidates: list[int]
    timings: dict[int, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)
    chosen: int | None = None
    steps: int = 0

    @staticmethod
    def tuning_steps(n_candidates: int) -> int:
        return 1 + TIMED_STEPS * n_candidates

    def size_for_next_step(self) -> int:
        if self.chosen is not None:
            return self.chosen
        return self.candidates[max(0, self.steps - 1) % len(self.candidates)]

    def record(self, size: int, tokens: int, seconds: float) -> None:
        """One step's passes at `size`: `tokens` tokens in `seconds`."""
        if self.chosen is not None:
            return
        self.steps += 1
        if self.steps == 1:
            return  # warm-up
        self.timings.setdefault(size, []).append((tokens, round(seconds, 4)))
        if self.steps == self.tuning_steps(len(self.candidates)):
            self.chosen = self.choose()

    def tokens_per_second(self) -> dict[int, float]:
        return {size: max(t / s for t, s in runs) for size, runs in self.timings.items()}

    def choose(self) -> int:
        speed = self.tokens_per_second()
        best = max(speed.values())
        return min(size for size, tps in speed.items() if tps >= NEAR_BEST * best)

    def record_dict(self) -> dict[str, Any]:
        """Candidates, each one's timed steps as [tokens, seconds], best tokens/s, and the choice."""
        return {
            "candidates": self.candidates,
            "timed_steps": {str(k): v for k, v in self.timings.items()},
            "tokens_per_second": {str(k): round(v, 1) for k, v in self.tokens_per_second().items()},
            "chosen": self.chosen,
        }


class StepClock:
    """Wall time of one step's passes on `device` (waits for a GPU to finish before reading the clock)."""

    def __init__(self, device):
        from sftlib.matmul import synchronizer

        self.sync = synchronizer(device.type)

    def __enter__(self):
        self.sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.start


# --------------------------------------------------------------------------- memory

# glibc returns large freed blocks to the OS at once (mmap above a threshold, heap trimming), so every
# pass page-faults its big temporaries in again. Keeping them for reuse saves that work at no cost in
# peak RSS (the same blocks are reused; README "Performance" has the measurement). The process keeps
# up to this much freed memory instead of returning it.
KEEP_FREED_BYTES = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>


def keep_freed_memory() -> str:
    """Tell glibc's malloc to keep freed memory for reuse (mallopt); says what was done, or why not."""
    import ctypes
    import ctypes.util
    import platform

    if platform.libc_ver()[0] != "glibc":
        return "unchanged: not glibc"
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    ok = all(libc.mallopt(p, KEEP_FREED_BYTES) == 1 for p in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))
    if not ok:
        return "unchanged: glibc refused mallopt"
    return (
        f"glibc keeps up to {KEEP_FREED_BYTES >> 20} MB of freed memory for reuse (mmap and trim thresholds)"
    )


def activation_bytes_per_token(model, autocast_dtype=None, tokens: int = MEASURE_TOKENS) -> float | None:
    """Bytes of activations autograd keeps for the backward pass, per token, from two short forward passes.

    Gradients flow into the input embeddings, so a frozen base model keeps what LoRA's backward needs;
    the run's autocast applies; weights are not counted and shared storage counts once. The passes
    are `tokens` and 2 x `tokens` long and the difference is taken, so per-pass costs (autocast's
    low-precision weight copies, rotary tables) don't count as per-token ones. The RNG state is
    restored, so the run's dropout masks are unchanged. None for a model without a plain backbone.
    """
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if backbone is None or model.get_input_embeddings() is None:
        return None
    short, long = (_saved_bytes(model, backbone, n, autocast_dtype) for n in (tokens, 2 * tokens))
    return max(0, long - short) / tokens


def _saved_bytes(model, backbone, tokens: int, autocast_dtype) -> int:
    import torch

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    device = model.get_input_embeddings().weight.device
    ids = torch.zeros((1, tokens), dtype=torch.long, device=device)
    positions = torch.arange(tokens, device=device).unsqueeze(0)
    was_training = model.training
    model.train()
    try:
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            torch.enable_grad(),
            torch.autocast(
                device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
            ),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
            backbone(inputs_embeds=embeds, position_ids=positions, use_cache=False)
    finally:
        model.train(was_training)
    return sum(saved.values())


def free_memory_bytes(device, pending_bytes: int = 0) -> int:
    """Memory free for activations on `device`, less `pending_bytes` still to be placed there."""
    import torch

    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    return max(0, free - pending_bytes)

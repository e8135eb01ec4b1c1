"""The pass size, timed: candidate `pass_tokens` tried on the first optimizer steps, the best one kept.

The best pass size depends on caches, cores and the model, so where the config leaves
`training.pass_tokens` null, the first optimizer steps run their passes at candidate sizes in turn.
Each step is still one optimizer step on the same examples, so only float rounding changes. After one
untimed step, each candidate is timed on TIMED_STEPS steps, and the smallest size within `NEAR_BEST`
of the fastest is kept for the rest of the run. Candidates are bounded by memory (`sftlib.training.fast_path.plan`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

# A candidate within 5% of the fastest counts as as fast: the smaller pass holds less memory.
NEAR_BEST = 0.95
TIMED_STEPS = 2  # timed steps per candidate, after one untimed first step
FIRST_PASS_TOKENS = 128  # the smallest candidate pass; larger ones double up to the budget
MAX_CANDIDATES = 3  # with TIMED_STEPS, the first 7 steps are timing steps


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
        from sftlib.training.fast_path.timing import synchronizer

        self.sync = synchronizer(device.type)

    def __enter__(self):
        self.sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.start

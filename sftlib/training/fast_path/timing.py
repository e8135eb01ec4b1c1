"""Timing on the training device: wall time that waits for a GPU, and matmuls at a model's own shapes.

The training plan times the model's linear layers in bf16 and fp32 to choose the precision
(`sftlib.training.fast_path.measure`), and the pass tuner times whole steps (`sftlib.training.fast_path.pass_tuner`). `sftlib bench` uses the
same helpers for its matmul ceilings.
"""

from __future__ import annotations

import collections
import time


def synchronizer(device: str):
    """A call that waits for `device` to finish queued work (a GPU's kernels run asynchronously)."""
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def best_seconds(fn, device: str = "cpu", seconds: float = 1.0, at_least: int = 2) -> float:
    """The fastest of repeated calls of `fn` over about `seconds` (after one untimed call)."""
    sync = synchronizer(device)
    fn()
    sync()
    best, runs, end = float("inf"), 0, time.perf_counter() + seconds
    while runs < at_least or time.perf_counter() < end:
        start = time.perf_counter()
        fn()
        sync()
        best, runs = min(best, time.perf_counter() - start), runs + 1
    return best


def matmul_gflops(dtype_name: str, device: str = "cpu", n: int | None = None, seconds: float = 1.0) -> float:
    """Best observed GFLOP/s of an n x n matmul in this dtype (best of many: other jobs share the cores)."""
    import torch

    n = n or (8192 if device == "cuda" else 2048)
    dtype = getattr(torch, dtype_name)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return 2 * n**3 / best_seconds(lambda: torch.matmul(a, b), device, seconds) / 1e9


def linear_shapes(model) -> dict[tuple[int, int], int]:
    """{(in_features, out_features): how many} over the model's torch.nn.Linear layers (LM head included).

    LoRA adapters (rank-r matrices inside a PEFT layer) are left out: they are a small share of the work.
    """
    import torch

    shapes: collections.Counter = collections.Counter()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".lora_" not in f".{name}":
            shapes[(module.in_features, module.out_features)] += 1
    return dict(shapes)


def model_matmul_seconds(
    shapes: dict[tuple[int, int], int],
    tokens: int,
    dtype_name: str,
    device: str = "cpu",
    weight_grads: bool = False,
    seconds: float = 0.1,
) -> float:
    """Seconds the model's linear layers take for `tokens` tokens: forward and input-gradient matmuls
    (a frozen base, as with LoRA), plus the weight-gradient ones when `weight_grads`."""
    import torch

    dtype = getattr(torch, dtype_name)
    total = 0.0
    for (k, n), count in shapes.items():
        x = torch.randn(tokens, k, device=device).to(dtype)
        w = torch.randn(n, k, device=device).to(dtype)
        g = torch.randn(tokens, n, device=device).to(dtype)

        def one(x=x, w=w, g=g):
            torch.nn.functional.linear(x, w)  # forward
            torch.matmul(g, w)  # gradient of the input
            if weight_grads:
                torch.matmul(g.t(), x)  # gradient of the weight

        total += count * best_seconds(one, device, seconds)
    return total

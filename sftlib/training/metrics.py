"""What a training run measured, for run_info.json: throughput, peak memory, the final loss, the library versions."""

from __future__ import annotations

from typing import Any


def throughput(log_history: list[dict], runtime_s: float) -> float | None:
    """Trained tokens per second over all ranks (TRL logs the global `num_tokens` count)."""
    counts = [h["num_tokens"] for h in log_history if "num_tokens" in h]
    if not counts or not runtime_s:
        return None
    return round(float(counts[-1]) / runtime_s, 1)


def peak_memory() -> dict[str, Any]:
    """This process's peak memory: allocated GPU memory on CUDA, else the resident set size."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {
            "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "peak_memory_kind": "cuda_allocated",
        }
    import resource

    return {
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_memory_kind": "cpu_max_rss",
    }


def final_loss(history: list[dict], fallback: float) -> float:
    losses = [h["loss"] for h in history if "loss" in h]
    return float(losses[-1]) if losses else float(fallback)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out

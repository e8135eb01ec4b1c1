"""The machine a bench runs on: the CPU and whether it computes bf16 natively, and the matmul ceilings.

MFU is measured against two ceilings: large square matmuls (the machine's best) and the model's own
linear-layer shapes at a few pass sizes (what these matmuls can reach here). Only the precisions a run
can use are timed: fp32 alone on a CPU without native bf16, where bf16 is emulated and a bf16 ceiling
takes minutes to time and means nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def training_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_matmul_gflops(
    shapes: dict[tuple[int, int], int], tokens: int, dtype_name: str, device: str = "cpu"
) -> float:
    """GFLOP/s of the model's linear layers at `tokens` tokens per pass (forward + input gradient)."""
    from sftlib.timing import model_matmul_seconds

    flops = sum(2 * 2 * tokens * k * n * count for (k, n), count in shapes.items())
    return flops / model_matmul_seconds(shapes, tokens, dtype_name, device) / 1e9


def usable_precisions(device: str) -> tuple[str, ...]:
    """The precisions training can use here: bf16 and fp32 on a GPU or a CPU with native bf16, else fp32."""
    from sftlib.modeling import cpu_has_fast_bf16

    return ("bfloat16", "float32") if device != "cpu" or cpu_has_fast_bf16() else ("float32",)


def model_shape_ceilings(
    cfg, device: str, tokens=(128, 512, 2048), precisions=("bfloat16", "float32")
) -> dict[str, Any]:
    """GFLOP/s of the model's own linear layers (forward + input gradient) at a few pass sizes, per precision.

    Built from the model's config on the meta device: only the layer shapes are needed, not the weights.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sftlib import modeling
    from sftlib.timing import linear_shapes

    config = AutoConfig.from_pretrained(
        modeling.resolve_path(cfg.model), trust_remote_code=cfg.model.trust_remote_code
    )
    with torch.device("meta"):
        shapes = linear_shapes(AutoModelForCausalLM.from_config(config))
    return {
        "tokens_per_pass": list(tokens),
        "shapes": {f"{k}x{n}": count for (k, n), count in shapes.items()},
        **{
            name: {str(t): round(model_matmul_gflops(shapes, t, name, device), 1) for t in tokens}
            for name in precisions
        },
    }


def ceilings(cfg, device: str, precisions: tuple[str, ...]) -> dict[str, Any]:
    """Both ceilings, in each of `precisions`: large squares, and the model's own shapes. A precision
    not timed has None (`bf16_gflops` on a CPU without native bf16)."""
    from sftlib.timing import matmul_gflops

    squares = {
        name: matmul_gflops(name, device) if name in precisions else None for name in ("bfloat16", "float32")
    }
    return {
        "device": device,
        "precisions": list(precisions),
        "bf16_gflops": squares["bfloat16"],
        "fp32_gflops": squares["float32"],
        "model_shapes": model_shape_ceilings(cfg, device, precisions=precisions),
    }


def machine() -> dict[str, Any]:
    """The CPU (model name, whether bf16 is native and from which flags), cores, load, torch, GPU."""
    import platform

    import torch

    from sftlib.modeling import cpu_bf16_flags, cpu_has_fast_bf16

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_bf16_flags": cpu_bf16_flags(),
        "cpu_native_bf16": cpu_has_fast_bf16(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        # oneDNN, which runs PyTorch's CPU matmuls, can be told to use less of the CPU than it has
        # (e.g. AVX512_CORE: no bf16 instructions, as on a CPU without native bf16); the flags then overstate.
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }

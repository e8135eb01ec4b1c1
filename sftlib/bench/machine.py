"""The machine a bench runs on: the CPU and whether it computes bf16 natively, and the matmul ceilings.

MFU is measured against two ceilings: large square matmuls (the machine's best) and the model's own
linear-layer shapes at a few pass sizes (what these matmuls can reach here). Only the precisions a run
can use are timed: fp32 alone on a CPU without native bf16, where bf16 is emulated and a bf16 ceiling
takes minutes to time and means nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("sftlib")


# CPU flags that mean bf16 matmuls run in hardware: AVX512-BF16 and AMX-BF16 on x86 (/proc/cpuinfo
# "flags"), BF16 on Arm (/proc/cpuinfo "Features"). Without one, PyTorch emulates bf16 on the CPU.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str] | None:
    """The native-bf16 flags the CPU reports (maybe none), or None where the CPU lists no flags at all.

    `cpuinfo` is the text of /proc/cpuinfo (read when not given; None where there is no such file).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return [flag for flag in NATIVE_BF16_FLAGS if flag in value.split()]
    return None


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 on x86, BF16 on Arm).

    Without it PyTorch emulates bf16, several times slower than fp32 (the performance notes have the
    ceilings per CPU). Read from the CPU flags; where the CPU lists
    none (no /proc/cpuinfo), a 512x512 bf16 matmul is timed against an fp32 one, and the log says so.
    """
    flags = cpu_bf16_flags()
    if flags is not None:
        return bool(flags)
    from sftlib.training.fast_path.timing import matmul_gflops

    bf16, fp32 = matmul_gflops("bfloat16", n=512, seconds=0.2), matmul_gflops("float32", n=512, seconds=0.2)
    log.info(
        "no CPU flags to read: timed a 512x512 matmul, bf16 %.0f GFLOP/s against fp32 %.0f: %s",
        bf16,
        fp32,
        "native bf16" if bf16 > fp32 else "emulated bf16",
    )
    return bf16 > fp32


def training_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_matmul_gflops(
    shapes: dict[tuple[int, int], int], tokens: int, dtype_name: str, device: str = "cpu"
) -> float:
    """GFLOP/s of the model's linear layers at `tokens` tokens per pass (forward + input gradient)."""
    from sftlib.training.fast_path.timing import model_matmul_seconds

    flops = sum(2 * 2 * tokens * k * n * count for (k, n), count in shapes.items())
    return flops / model_matmul_seconds(shapes, tokens, dtype_name, device) / 1e9


def usable_precisions(device: str) -> tuple[str, ...]:
    """The precisions training can use here: bf16 and fp32 on a GPU or a CPU with native bf16, else fp32."""
    return ("bfloat16", "float32") if device != "cpu" or cpu_has_fast_bf16() else ("float32",)


def model_shape_ceilings(
    cfg, device: str, tokens=(128, 512, 2048), precisions=("bfloat16", "float32")
) -> dict[str, Any]:
    """GFLOP/s of the model's own linear layers (forward + input gradient) at a few pass sizes, per precision.

    Built from the model's config on the meta device: only the layer shapes are needed, not the weights.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sftlib.models import modeling
    from sftlib.training.fast_path.timing import linear_shapes

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
    from sftlib.training.fast_path.timing import matmul_gflops

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

"""`sftlib bench`: sftlib's default training path against a plain TRL run, same data and seed.

The parent process records the machine (CPU model, whether bf16 is native), tokenizes once (warming
the datasets cache), measures the matmul ceilings in the precisions training can use, then runs each
side in its own subprocess (`sftlib.bench.side`), sftlib's first, alternating sides over `repeats`, and
compares the best run of each. Each phase is named on stderr as it starts, and each side's own phases
(loading, warm-up steps, timed steps) as it reaches them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sftlib.bench.side import SIDES, default_warmup


def bench(
    config: str,
    overrides: list[str] = (),
    steps: int = 5,
    data: str = "config",
    repeats: int = 1,
    warmup: int | None = None,
    profile_steps: int = 0,
) -> dict[str, Any]:
    """Run both sides `repeats` times, alternating (ABBA...), and compare the best run of each."""
    from sftlib.bench import machine
    from sftlib.bench.chat_mix import chat_mix_overrides
    from sftlib.config import load_config
    from sftlib.data import dataset
    from sftlib.errors import SftlibError
    from sftlib.models import modeling

    overrides = list(overrides)
    workdir = Path(tempfile.mkdtemp(prefix="sftlib-bench-"))
    if data == "chat-mix":
        overrides += chat_mix_overrides(workdir)
    elif data != "config":
        raise SftlibError(f"--data {data!r} is not one of config, chat-mix.")
    cfg = load_config(config, overrides)
    phase("tokenizing the data once, outside the timings")
    dataset.prepare(cfg, modeling.load_tokenizer(cfg.model), splits=("train",))

    device = machine.training_device()
    warmup = default_warmup() if warmup is None else warmup
    precisions = machine.usable_precisions(device)
    names = " and ".join(p.replace("bfloat16", "bf16").replace("float32", "fp32") for p in precisions)
    why = "" if "bfloat16" in precisions else " (this CPU has no native bf16: bf16 is not timed)"
    phase(f"timing the {device} matmul ceilings in {names}{why}")
    ceilings = machine.ceilings(cfg, device, precisions)
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    order = ("sftlib", "baseline")  # sftlib's first: its steps never run in emulated bf16
    for r in range(repeats):
        for side in order if r % 2 == 0 else order[::-1]:
            phase(f"{side} side, run {r + 1} of {repeats}: {warmup} warm-up steps, then {steps} timed steps")
            result_file = workdir / f"{side}-{len(runs[side])}.json"
            cmd = [sys.executable, "-m", "sftlib.bench.side", "--side", side, "--config", config]
            cmd += ["--steps", str(steps), "--warmup", str(warmup), "--profile-steps", str(profile_steps)]
            cmd += [x for o in overrides for x in ("--set", o)] + ["--out", str(result_file)]
            runs[side].append(run_side_process(cmd, side, result_file))
    best = {side: max(rs, key=lambda r: r["tokens_per_second"]) for side, rs in runs.items()}
    base, ours = best["baseline"], best["sftlib"]
    fastest = max(precisions, key=lambda p: ceilings["model_shapes"][p]["512"])
    for r in best.values():
        bf16 = ceilings["bf16_gflops"]
        r["mfu_bf16"] = r["achieved_gflops"] / bf16 if bf16 else None
        # Against the fastest ceiling timed: the honest figure wherever bf16 is not the faster one.
        r["mfu_best"] = r["achieved_gflops"] / max(g for g in (bf16, ceilings["fp32_gflops"]) if g)
        # Against the model's own layer shapes at 512 tokens per pass: what these matmuls can reach here.
        r["mfu_model"] = r["achieved_gflops"] / ceilings["model_shapes"][fastest]["512"]
    return {
        "config": config,
        "overrides": overrides,
        "data": data,
        "steps": steps,
        "warmup_steps": warmup,
        "repeats": repeats,
        "machine": machine.machine(),
        "ceilings": ceilings,
        "baseline": base,
        "sftlib": ours,
        "runs": runs,
        "speedup": ours["tokens_per_second"] / base["tokens_per_second"],
        "rss_ratio": max(r["peak_rss_mb"] for r in runs["sftlib"])
        / max(r["peak_rss_mb"] for r in runs["baseline"]),
        "gpu_memory_ratio": (
            max(r["peak_gpu_mb"] for r in runs["sftlib"]) / max(r["peak_gpu_mb"] for r in runs["baseline"])
            if device == "cuda"
            else None
        ),
        "mfu_bf16": ours["mfu_bf16"],
        "mfu_best": ours["mfu_best"],
        "mfu_model": ours["mfu_model"],
    }


def phase(text: str) -> None:
    """Name a phase of the bench as it starts (stderr: the results table goes to stdout)."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def run_side_process(cmd: list[str], side: str, result_file: Path) -> dict[str, Any]:
    """Run one side; pass on its own phase lines (`bench: ...`) as they come, keep the rest for an error."""
    from sftlib.errors import SftlibError

    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    tail: list[str] = []
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env) as proc:
        for line in proc.stderr:
            if line.startswith("bench: "):
                print(f"bench: {side}: {line.removeprefix('bench: ')}", end="", file=sys.stderr, flush=True)
            tail = [*tail[-60:], line]
    if proc.returncode != 0:
        raise SftlibError(f"bench side {side!r} failed:\n{''.join(tail)[-3000:]}")
    return json.loads(result_file.read_text())


def format_table(result: dict[str, Any]) -> str:
    """The comparison as a fixed-width text table."""
    from sftlib.bench.profiling import format_breakdown

    rows = [
        ("real tokens/s", "tokens_per_second", "{:.0f}"),
        ("trained tokens/s", "trained_tokens_per_second", "{:.0f}"),
        ("seconds/step", "seconds_per_step", "{:.2f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("peak GPU memory (MB)", "peak_gpu_mb", "{:.0f}"),
        ("MFU (bf16 ceiling)", "mfu_bf16", "{:.3f}"),
        ("MFU (fastest ceiling)", "mfu_best", "{:.3f}"),
        ("MFU (model shapes 512)", "mfu_model", "{:.3f}"),
        ("precision", "precision", "{}"),
        ("micro-batch x accum", None, None),
        ("weights / autocast", None, None),
        ("act. checkpointing", "activation_checkpointing", "{}"),
        ("pass_tokens", None, None),
        ("collator", "collator", "{}"),
    ]
    b, s = result["baseline"], result["sftlib"]
    lines = [f"{'':22}{'baseline':>22}{'sftlib':>22}"]
    for label, key, fmt in rows:
        if label.startswith("micro"):
            cells = [f"{r['micro_batch_size']} x {r['gradient_accumulation_steps']}" for r in (b, s)]
        elif label == "pass_tokens":
            cells = [
                "whole micro-batch" if r["pass_tokens"] is None else f"<= {r['pass_tokens']}" for r in (b, s)
            ]
        elif label.startswith("weights"):
            cells = [f"{r['weights_dtype']} / {'bf16' if r['bf16_autocast'] else 'off'}" for r in (b, s)]
        elif b[key] is None:
            continue  # e.g. GPU memory on a CPU run, a bf16 MFU where bf16 was not timed
        else:
            cells = [fmt.format(r[key]) for r in (b, s)]
        lines.append(f"{label:22}{cells[0]:>22}{cells[1]:>22}")
    for side in SIDES:
        if result[side].get("profile"):
            lines.append(format_breakdown(side, result[side]["profile"]))
    c, m = result["ceilings"], result["machine"]
    gpu = result.get("gpu_memory_ratio")
    bf16 = "native bf16" if m.get("cpu_native_bf16") else "emulated bf16"
    capped = f"; oneDNN capped at {m['onednn_max_cpu_isa']}" if m.get("onednn_max_cpu_isa") else ""
    lines.append(f"CPU: {m.get('cpu')} ({bf16}; flags {m.get('cpu_bf16_flags')}{capped})")
    lines.append(
        f"speedup {result['speedup']:.2f}x   rss_ratio {result['rss_ratio']:.2f}   "
        + (f"gpu_memory_ratio {gpu:.2f}   " if gpu is not None else "")
        + f"{c['device']} matmul ceilings: {ceiling_text(c)}   "
        f"load average {result['machine']['load_average'][0]:.1f} on {result['machine']['cores']} cores"
    )
    return "\n".join(lines)


def ceiling_text(c: dict[str, Any]) -> str:
    """`bf16 970 GFLOP/s, fp32 234 GFLOP/s`, or `fp32 234 GFLOP/s (bf16 not timed)`."""
    timed = [
        f"{name} {c[key]:.0f} GFLOP/s"
        for name, key in (("bf16", "bf16_gflops"), ("fp32", "fp32_gflops"))
        if c[key]
    ]
    return ", ".join(timed) + ("" if c["bf16_gflops"] else " (bf16 not timed: emulated here)")

"""Multi-process training: the process group, the checks that it is real, and the notebook launch.

`train()` runs unchanged in every process. This module makes sure that N launched processes are one
training run, not N independent ones (world size, requested vs. actual strategy, identical
parameters afterwards), that only rank 0 talks, and that `launch(num_processes=N)` starts exactly
what `accelerate launch -m sftlib train` starts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sftlib.errors import SftlibError

log = logging.getLogger("sftlib")

# The parameter fingerprints of two ranks of one DDP run are bitwise equal; the tolerance only allows for
# reduction order on exotic hardware. Ranks that trained separately differ by far more (LoRA B starts at 0).
FINGERPRINT_RTOL = 1e-6
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
# How long the merging process waits for the other ranks of its machine to exit: they have nothing left
# to do but tear down, so only a hung process takes longer.
EXIT_TIMEOUT_S = 300.0


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def distributed_state(use_cpu: bool):
    """The process group (created for CPU when there is no GPU), after checking it is what was launched.

    Without `cpu=True` a process started on a CPU machine may see world size 1, and N processes would
    silently train N independent copies.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    if (
        _env_true("ACCELERATE_USE_CPU")
        and "MASTER_ADDR" in os.environ
        and not any(v in os.environ for v in _WORLD_SIZE_VARS)
    ):
        raise SftlibError(
            "`accelerate launch --cpu` with more than one process starts a single process unless it is given "
            "an MPI hostfile, so this would train alone while you expect data parallelism.",
            "launch without `--cpu`: `accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes N "
            "-m sftlib train ...` runs N processes over gloo when there is no GPU.",
        )
    state = PartialState(cpu=use_cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise SftlibError(
            f"{launched} processes were launched but the trainer sees world size {state.num_processes}.",
            "launch with `accelerate launch` or sftlib.train.launch, and create no Accelerator before it.",
        )
    requested = requested_strategy()
    if requested and state.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU):
        raise SftlibError(
            f"the launch config asks for {requested}, but accelerate set up {type_name(state.distributed_type)}: "
            f"accelerate shards with {requested} only across GPUs (or other accelerators), so it would silently run "
            "plain data parallelism instead.",
            "use configs/accelerate/ddp.yaml on CPU, or run this launch config on GPUs.",
        )
    if not state.is_main_process:
        quiet_this_process()
    return state


def requested_strategy() -> str | None:
    """FSDP / DEEPSPEED when `accelerate launch` was asked for it (its launcher sets these variables)."""
    if _env_true("ACCELERATE_USE_FSDP"):
        return "FSDP"
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        return "DEEPSPEED"
    return None


def check_supported(model_cfg) -> None:
    """Refuse strategy/model combinations that sftlib does not support (docs/scaling.md)."""
    strategy = requested_strategy()
    zero3 = strategy == "DEEPSPEED" and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    if model_cfg.load_in_4bit and (strategy == "FSDP" or zero3):
        raise SftlibError(
            f"QLoRA (model.load_in_4bit) with {'FSDP' if strategy == 'FSDP' else 'DeepSpeed ZeRO-3'} is not supported: "
            "sharding 4-bit bitsandbytes weights needs them stored in a float dtype (bnb_4bit_quant_storage), "
            "which sftlib's quantization does not set.",
            "use configs/accelerate/ddp.yaml (each GPU holds the 4-bit model) or deepspeed_zero2.yaml.",
        )


def type_name(distributed_type) -> str:
    return str(getattr(distributed_type, "value", distributed_type))


def quiet_this_process() -> None:
    """Silence sftlib's messages and the progress bars of datasets/transformers on ranks other than 0.

    The HF Trainer already logs and shows its own progress bar on rank 0 only (`log_level_replica`).
    """
    import datasets
    import transformers

    log.setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


# --------------------------------------------------------------------------- rank agreement


def param_fingerprint(model) -> list[float] | None:
    """[sum, sum of squares] in float64 of the trainable parameters, or None where they are ZeRO-3 partitions.

    FSDP2 parameters (DTensor shards) are gathered first, so every rank must call this, in the same order.
    Chunked so that a large embedding never needs a whole float64 copy.
    """

    total, squares = 0.0, 0.0
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if hasattr(param, "ds_numel"):  # DeepSpeed ZeRO-3: each rank holds a partition, nothing to compare
            return None
        tensor = param.detach()
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        for chunk in tensor.reshape(-1).split(1 << 24):
            chunk = chunk.double()
            total += float(chunk.sum())
            squares += float(chunk.square().sum())
    return [total, squares]


def check_ranks_agree(model) -> list[list[float] | None]:
    """Gather every rank's fingerprint; SftlibError unless all are equal. Returns them, rank by rank.

    Collective: every rank must call it. This is the proof that the processes trained one model.
    """
    from accelerate.utils import gather_object

    fingerprints = gather_object([param_fingerprint(model)])
    reference = fingerprints[0]
    if reference is None:
        return fingerprints
    for rank, fp in enumerate(fingerprints):
        if fp is None or not all(
            math.isclose(a, b, rel_tol=FINGERPRINT_RTOL) for a, b in zip(fp, reference, strict=True)
        ):
            raise SftlibError(
                f"after training, rank {rank} holds different parameters than rank 0 ({fp} vs {reference}): "
                "the processes trained separate models instead of one.",
                "launch with `accelerate launch` (configs/accelerate/) or sftlib.train.launch, not separate python processes.",
            )
    return fingerprints


# --------------------------------------------------------------------------- the end of a run


def leave(state) -> list[int]:
    """The last collective of a run: every rank says where it runs, then the process group ends.

    Returns, to every rank, the pids of the other ranks on this machine, so the one process that merges
    can wait until they have exited and freed their memory (`wait_for_exit`). After this no rank waits
    for another: a long merge can't hold the others on a collective until it times out.
    """
    if state.num_processes == 1:
        return []
    import socket

    from accelerate.utils import gather_object

    here = (socket.gethostname(), os.getpid())
    everyone = gather_object([here])
    state.destroy_process_group()  # a fork-launched group (notebook_launcher) ends with its processes
    return [pid for host, pid in everyone if host == here[0] and pid != here[1]]


def wait_for_exit(pids: list[int], timeout_s: float = EXIT_TIMEOUT_S) -> list[int]:
    """Wait until the processes `pids` have exited (a zombie has); returns those still running at `timeout_s`."""
    import time

    import psutil

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout_s
    waiting = [pid for pid in pids if running(pid)]
    if waiting:
        log.info("waiting for %d other rank(s) on this machine to exit before merging", len(waiting))
    while waiting and time.monotonic() < deadline:
        time.sleep(0.05)
        waiting = [pid for pid in waiting if running(pid)]
    if waiting:
        log.warning("warning: rank process(es) %s still run after %.0f s; merging anyway", waiting, timeout_s)
    return waiting


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


# --------------------------------------------------------------------------- launching


def launch_command(
    config_path: str | None,
    overrides: list[str] | tuple[str, ...],
    num_processes: int,
    *,
    accelerate_config: str | None = None,
    port: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> list[str]:
    """The `accelerate launch ... -m sftlib train ...` command line for N processes.

    Without `accelerate_config` this is plain DDP through torchrun (`--multi_gpu` is accelerate's name
    for that launcher; on a machine without a GPU the processes train on CPU over gloo).
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cmd += ["--config_file", str(accelerate_config)]
    else:
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--num_processes", str(num_processes), "--main_process_port", str(port or free_port())]
    cmd += ["-m", "sftlib", "train"]
    if config_path:
        cmd += ["--config", str(config_path)]
    for item in overrides:
        cmd += ["--set", item]
    if resume:
        cmd.append("--resume")
    if overwrite:
        cmd.append("--overwrite")
    return cmd


def reporting_errors(fn, errors: str):
    """`fn` as a worker function that, on an SftlibError, writes it to `errors/rank-N.json` before failing, so
    the launching process can report it as the CLI does: one `error: ... Fix: ...` line."""
    import functools

    @functools.wraps(fn)
    def worker(*args):
        import json
        import traceback

        try:
            return fn(*args)
        except SftlibError as exc:
            rank = os.environ.get("RANK", "0")
            record = {"message": exc.message, "fix": exc.fix, "traceback": traceback.format_exc()}
            Path(errors, f"rank-{rank}.json").write_text(json.dumps(record))
            raise SystemExit(1) from None  # a plain exit: torch elastic prints no traceback for it

    return worker


@contextlib.contextmanager
def worker_errors():
    """A folder for `reporting_errors`; a worker's SftlibError is raised here as the same SftlibError
    (the worker's traceback on its `__cause__`, shown by --debug), instead of torch elastic's dump."""
    import json
    import tempfile

    # torch logs each failed worker and the workers it then stops; the error raised below says why.
    loggers = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing.spawn")]
    levels = [logger.level for logger in loggers]
    with tempfile.TemporaryDirectory(prefix="sftlib-errors-") as errors:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            yield errors
        except Exception:
            reports = sorted(Path(errors).glob("rank-*.json"))
            if not reports:
                raise
            record = json.loads(reports[0].read_text())
            raise SftlibError(record["message"], record["fix"]) from WorkerTraceback(record["traceback"])
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


class WorkerTraceback(Exception):
    """The traceback of the worker that failed, as text (what --debug shows under the error)."""


def run_streaming(cmd: list[str]) -> None:
    """Run `cmd`, copying its output to this process's stdout as it comes (so a notebook shows it).

    SftlibError with the last lines of output when it fails.
    """
    tail = b""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_child_env()) as proc:
        try:
            while chunk := proc.stdout.read1(4096):
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
                tail = (tail + chunk)[-4000:]
        except KeyboardInterrupt:
            proc.terminate()  # torchrun passes SIGTERM on to the workers
            proc.wait()
            raise
    if proc.returncode != 0:
        errors = [line for line in tail.decode(errors="replace").splitlines() if line.startswith("error:")]
        raise SftlibError(
            errors[0][len("error: ") :]
            if errors
            else f"the training processes failed (exit {proc.returncode}).",
            None if errors else "see the output above for the first error.",
        )


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

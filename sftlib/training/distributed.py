"""Multi-process training: the process group, and the checks that N processes train one model.

`train()` runs unchanged in every process. This module makes sure that N launched processes are one
training run, not N independent ones (world size, requested vs. actual strategy, identical
parameters afterwards), that only rank 0 talks, and that `launch(num_processes=N)` starts exactly
what `accelerate launch -m sftlib train` starts.
"""

from __future__ import annotations

import logging
import math
import os

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
            "launch with `accelerate launch` or sftlib.training.launch.launch, and create no Accelerator before it.",
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
                "launch with `accelerate launch` (configs/accelerate/) or sftlib.training.launch.launch, not separate python processes.",
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

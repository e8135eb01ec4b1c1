"""Starting a training run: in this kernel, on N processes through accelerate.notebook_launcher, or as
`accelerate launch` children, with a worker's error reported as the CLI reports it: one line.

`launch(num_processes=N)` starts exactly what `accelerate launch -m sftlib train` starts: N processes,
each running `sftlib.training.train.run_from_files`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sftlib.errors import SftlibError, WorkerTraceback
from sftlib.outputs.layout import NOTEBOOK
from sftlib.outputs.saving import read_run_info
from sftlib.training.train import run_from_files


def launch(
    config_path: str | None,
    overrides: list[str] = (),
    num_processes: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    accelerate_config: str | None = None,
) -> dict[str, Any]:
    """Train from a notebook. Returns output_dir/run_info.json.

    - 1 process: in this kernel.
    - N > 1: `accelerate.notebook_launcher` forks N workers, each running `run_from_files`, the
      same code as `accelerate launch -m sftlib train`. The kernel must not have imported
      bitsandbytes yet (accelerate refuses to fork then), so nothing here loads the config
      before the fork: the workers validate it.
    - `accelerate_config` (FSDP, DeepSpeed, multi-node): notebook_launcher can't take a launch
      config file, so this runs `accelerate launch --config_file ...` as a child process.
    """
    from sftlib.config import output_dir_of
    from sftlib.outputs import layout

    if num_processes < 1:
        raise SftlibError(f"num_processes must be at least 1, got {num_processes}.")
    # Before any worker starts: a refused output_dir is one error here, not one per worker.
    layout.check_output_dir(
        output_dir_of(config_path, overrides), resume=resume, overwrite=overwrite, how=NOTEBOOK
    )
    if accelerate_config:
        cmd = launch_command(
            config_path,
            list(overrides),
            num_processes,
            accelerate_config=accelerate_config,
            resume=resume,
            overwrite=overwrite,
        )
        run_streaming(cmd)
    elif num_processes == 1:
        return run_from_files(config_path, list(overrides), resume, overwrite, how=NOTEBOOK)
    else:
        import sys

        from accelerate import notebook_launcher

        if "bitsandbytes" in sys.modules:
            raise SftlibError(
                "NUM_PROCESSES > 1 needs a fresh kernel: this one already imported bitsandbytes "
                "(through transformers), and accelerate.notebook_launcher refuses to fork after that.",
                "restart the kernel and run the launch cell before any cell that loads a model or config.",
            )
        with worker_errors() as errors:
            notebook_launcher(
                reporting_errors(run_from_files, errors),
                args=(config_path, list(overrides), resume, overwrite, True, NOTEBOOK),
                num_processes=num_processes,
                use_port=str(free_port()),
            )
    return read_run_info(output_dir_of(config_path, overrides))


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

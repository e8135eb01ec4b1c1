"""Final artifacts: written to a staging folder, moved in file by file, then reloaded and compared.

A final folder never holds a half-written file: a crash or a full disk while saving leaves the
previous files (or none) and removes the staging folder. `verify_safetensors` re-reads what was
written and compares tensors with the model in memory, so a bad write fails the run instead of
surfacing at the next load.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from sftlib.errors import SftlibError
from sftlib.files import move_files_into

STAGING = ".sftlib-staging"
PICKLES = {".bin", ".pt", ".pth", ".pkl", ".pickle"}


def staging_dir(target: str | Path) -> Path:
    return Path(target) / STAGING


def write_atomically(target: str | Path, writer: Callable[[Path], object]) -> list[Path]:
    """Call `writer(staging_folder)`, then move what it wrote into `target`; nothing is moved if it fails."""
    target = Path(target)
    staging = staging_dir(target)
    shutil.rmtree(staging, ignore_errors=True)  # a leftover of a run that died while saving
    staging.mkdir(parents=True)
    try:
        writer(staging)
        return move_files_into(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def drop_pickles(folder: str | Path) -> None:
    """Remove pickled side files (Trainer.save_model writes training_args.bin): safetensors + JSON only."""
    for path in Path(folder).iterdir():
        if path.is_file() and path.suffix in PICKLES:
            path.unlink()


def safetensors_files(folder: str | Path, stem: str = "model") -> list[Path]:
    """The weight files of a saved model (`stem` is "model" or "adapter_model"), sharded or not."""
    folder = Path(folder)
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        return sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    single = folder / f"{stem}.safetensors"
    return [single] if single.is_file() else []


def verify_safetensors(
    folder: str | Path, expected: Mapping[str, object], stem: str = "model", sample: int = 4
) -> int:
    """Reload the weights saved in `folder` and compare up to `sample` tensors with `expected` exactly.

    `expected` maps saved names to tensors (a state dict). Raises SftlibError when the files are
    missing, unreadable, hold none of the expected names or differ; returns how many were compared.
    """
    import torch
    from safetensors import safe_open

    folder = Path(folder)
    files = safetensors_files(folder, stem)
    if not files:
        raise SftlibError(f"saving failed: {folder} holds no {stem}.safetensors after writing it.")
    compared = 0
    try:
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                names = [n for n in f.keys() if n in expected]  # noqa: SIM118 (safe_open has no __iter__)
                picks = names[:1] + names[-1:] if len(files) > 1 else _spread(names, sample)
                for name in picks:
                    want = expected[name].detach().to("cpu")
                    if not torch.equal(f.get_tensor(name), want.to(f.get_tensor(name).dtype)):
                        raise SftlibError(
                            f"saving failed: tensor {name} in {path} differs from the trained weights."
                        )
                    compared += 1
    except SftlibError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError on a damaged file
        raise SftlibError(f"saving failed: {folder} cannot be read back ({exc}).") from exc
    if compared == 0:
        raise SftlibError(f"saving failed: {folder} holds none of the trained model's weights.")
    return compared


def _spread(names: list[str], k: int) -> list[str]:
    if len(names) <= k:
        return names
    step = (len(names) - 1) / (k - 1)
    return [names[round(i * step)] for i in range(k)]


def save_trained(trainer, target: str | Path) -> None:
    """`trainer.save_model` into `target` via a staging folder, without pickles, then verified.

    Call on every rank (FSDP and DeepSpeed gather the weights inside save_model); only the main
    process moves and verifies files. A LoRA model saves its adapter, anything else the full model.
    """
    target = Path(target)
    staging = staging_dir(target)
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)  # a leftover of a run that died while saving
    accelerator.wait_for_everyone()
    try:
        trainer.save_model(str(staging))
        if accelerator.is_main_process:
            drop_pickles(staging)
            move_files_into(staging, target)
    finally:
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
    if accelerator.is_main_process and not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        # Sharded training keeps only a shard in this process's model: nothing whole to compare with.
        model = accelerator.unwrap_model(trainer.model)
        if hasattr(model, "peft_config"):
            from peft import get_peft_model_state_dict

            verify_safetensors(target, get_peft_model_state_dict(model), stem="adapter_model")
        else:
            verify_safetensors(target, model.state_dict())
    accelerator.wait_for_everyone()

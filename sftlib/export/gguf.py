"""A finished run exported to GGUF for llama.cpp and Ollama, with a Modelfile beside it, written whole
or not at all.

The run's merged model (or full fine-tune) in its output_dir goes through llama.cpp's converter
(sftlib.export.converter), which writes the tensors, the tokenizer and the chat template saved with
the run (the one `model.chat_template` gave included) into one file. The GGUF and the Modelfile are
written into a staging folder beside `--out` and moved in only when both are whole: a failed export
leaves `--out` as it was.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

from sftlib.errors import SftlibError
from sftlib.export import converter, modelfile
from sftlib.files import move_files_into
from sftlib.outputs.layout import ADAPTER_DIRNAME, RESOLVED_CONFIG

OUTTYPES = ("f16", "q8_0", "bf16", "f32")  # the converter's, less its ternary types (BitNet models only)
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `export` wrote, and how long the conversion took."""

    gguf: Path
    modelfile: Path
    outtype: str
    seconds: float

    def describe(self) -> str:
        size = self.gguf.stat().st_size / 2**20
        return (
            f"wrote {self.gguf} ({self.outtype}, {size:.0f} MiB, in {self.seconds:.1f} s) and {self.modelfile}\n"
            f"run it: llama-cli -m {self.gguf} -cnv, or: ollama create NAME -f {self.modelfile}"
        )


def checked_run(run_dir: Path) -> dict:
    """The run's config.json, when `run_dir` holds a model the converter can read; else SftlibError."""
    if not run_dir.is_dir():
        raise SftlibError(
            f"{run_dir} is not a folder.", "give a finished run's output_dir, e.g. runs/demo/model."
        )
    has_weights = any((run_dir / name).is_file() for name in WEIGHTS)
    if not ((run_dir / "config.json").is_file() and has_weights):
        if (run_dir / ADAPTER_DIRNAME / "adapter_config.json").is_file():
            raise SftlibError(
                f"{run_dir} holds a LoRA adapter but no merged model: GGUF needs the merged weights.",
                f"merge it first: `sftlib merge --config {run_dir / RESOLVED_CONFIG}`, then export again.",
            )
        raise SftlibError(
            f"{run_dir} holds no trained model (config.json or model.safetensors is missing).",
            "give a finished run's output_dir, e.g. runs/demo/model.",
        )
    return json.loads((run_dir / "config.json").read_text())


def gguf_name(run_dir: Path, outtype: str) -> str:
    """`demo.q8_0.gguf` for runs/demo/model (the folder `sftlib demo` trains into), else the run's name."""
    name = run_dir.parent.name if run_dir.name == "model" and run_dir.parent.name else run_dir.name
    return f"{name}.{outtype}.gguf"


def stop_tokens(run_dir: Path):
    """(the run's stop tokens as text: those training ends each assistant turn with, its tokenizer)."""
    from transformers import AutoTokenizer, GenerationConfig

    from sftlib.models.modeling import stop_ids

    tokenizer = AutoTokenizer.from_pretrained(str(run_dir))
    try:
        generation = GenerationConfig.from_pretrained(str(run_dir))
    except OSError:  # no generation_config.json: the tokenizer's EOS alone
        generation = None
    return [tokenizer.convert_ids_to_tokens(i) for i in stop_ids(tokenizer, generation)], tokenizer


def export(run_dir: str | Path, out: str | Path | None = None, outtype: str = "q8_0") -> Exported:
    """Convert the run in `run_dir` to `out/<name>.<outtype>.gguf` (default out: run_dir/gguf) and
    write an Ollama Modelfile beside it."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "gguf"
    if outtype not in OUTTYPES:
        raise SftlibError(
            f"--outtype {outtype} is not one of {', '.join(OUTTYPES)}.", "pass --outtype q8_0 or f16."
        )
    config = checked_run(run_dir)
    where = converter.ensure()
    architecture = (config.get("architectures") or ["(none in config.json)"])[0]
    known = converter.supported_architectures(where)
    if architecture not in known:
        raise SftlibError(
            f"{converter.NAME} {converter.VERSION} does not convert {architecture} models.",
            f"fine-tune an architecture it knows (e.g. {', '.join(sorted(known & _COMMON) or sorted(known)[:3])}), "
            "or convert with a newer llama.cpp's convert_hf_to_gguf.py.",
        )
    stops, tokenizer = stop_tokens(run_dir)
    name = gguf_name(run_dir, outtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        started = time.perf_counter()
        proc = converter.run([str(run_dir), "--outtype", outtype, "--outfile", str(staging / name)], where)
        seconds = time.perf_counter() - started
        if proc.returncode != 0 or not (staging / name).is_file():
            raise SftlibError(
                f"{converter.NAME} could not convert {run_dir}: {converter.last_line(proc)}",
                "the reason is the converter's own (docs/use-the-model.md lists what it converts); "
                f"{out} was left as it was.",
            )
        text = modelfile.modelfile(name, stops, modelfile.default_system_prompt(tokenizer))
        (staging / modelfile.MODELFILE).write_text(text)
        move_files_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Exported(out / name, out / modelfile.MODELFILE, outtype, seconds)


_COMMON = {
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MistralForCausalLM",
    "Gemma3ForCausalLM",
}

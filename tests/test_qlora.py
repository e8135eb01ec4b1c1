"""QLoRA on the CPU with bitsandbytes 0.50: 2 steps on a 4-bit NF4 base, merged into the unquantized
base, merged == base + adapter, and generation from both the merged model and the 4-bit base + adapter.

bitsandbytes 0.50 runs NF4 on a CPU with the kernels in its own wheel: dequantize and a torch matmul in
training; in eval mode on a CPU with AVX512-BF16, weights repacked for its fused bf16 CPU kernel (the one
that the optional `kernels` package would fetch a faster build of from the hub; see sftlib/noise.py).
No GPU and no download.
"""

import math
from pathlib import Path

import pytest
import torch

from sftlib.config import load_config
from sftlib.inference import generate, loading
from sftlib.models import modeling
from sftlib.outputs import merge
from sftlib.outputs.layout import ADAPTER_DIRNAME
from sftlib.training.train import train

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [[{"role": "user", "content": "Write this date as YYYY-MM-DD: 5 Mar 2021"}]]


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qlora") / "out"
    cfg = load_config(
        ROOT / "configs/tiny.yaml",
        [
            "model.load_in_4bit=true",
            "training.max_steps=2",
            f"dataset.name={ROOT / 'configs/data/iso_dates'}",
            "dataset.eval_split=null",
            f"training.output_dir={out}",
        ],
    )
    return cfg, train(cfg)


def test_the_configured_base_is_nf4_linear4bit_on_the_cpu(qlora_run):
    import bitsandbytes as bnb

    cfg, _ = qlora_run
    model = modeling.load_model(cfg.model)  # what train() trained on
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # 2 layers x q, k, v, o, gate, up, down
    for layer in quantized:
        assert layer.weight.dtype == torch.uint8 and layer.weight.device.type == "cpu"
        assert layer.weight.quant_state.quant_type == "nf4"


def test_two_qlora_steps_train_the_adapter_through_the_4bit_layers(qlora_run):
    from safetensors.torch import load_file

    cfg, info = qlora_run
    assert info["load_in_4bit"] is True and info["global_step"] == 2
    assert math.isfinite(info["final_loss"])
    adapter = load_file(cfg.output_dir / ADAPTER_DIRNAME / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    # LoRA B starts at zero: it moves only if gradients flowed back through the 4-bit q/v projections.
    assert lora_b and all(t.abs().max() > 0 for t in lora_b)


def test_the_merge_into_the_unquantized_base_equals_base_plus_adapter(qlora_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, _ = qlora_run
    out = cfg.output_dir
    merged = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()  # what train() merged
    assert merged.dtype == torch.float32
    assert not any("4bit" in type(m).__name__ for m in merged.modules())
    reference = merge.load_base_with_adapter(cfg.model, out / ADAPTER_DIRNAME, "float32").eval()
    base = modeling.load_model(cfg.model, quantize=False).eval()
    ids = merge.sample_inputs(AutoTokenizer.from_pretrained(out))

    difference = float((merge.logits(merged, ids) - merge.logits(reference, ids)).abs().max())
    effect = float((merge.logits(reference, ids) - merge.logits(base, ids)).abs().max())
    # fp32 rounding of W + BA on a 2-layer model stays within a few ulps of the logits; a merge that lost the
    # adapter, merged into 4-bit weights or scaled it wrongly would differ by a share of its whole effect.
    assert difference <= 1e-5 * max(1.0, float(merge.logits(reference, ids).abs().max()))
    assert effect > 100 * max(difference, 1e-6)
    check = qlora_run[1]["merge"]  # train() ran the same check, and recorded it
    assert (
        check["was_4bit"]
        and check["resolves_adapter"]
        and check["max_logit_difference"] <= check["tolerance"]
    )


def test_the_merged_model_and_the_4bit_base_with_adapter_both_generate(qlora_run):
    from peft import PeftModel

    cfg, _ = qlora_run
    merged_cfg, _ = loading.tuned_model(cfg)
    model, tokenizer = loading.load_for_generation(merged_cfg)
    answers = generate.generate(model, tokenizer, PROMPTS, max_new_tokens=6, progress=False)
    assert len(answers) == 1 and isinstance(answers[0], str)

    # The NF4 base with the adapter kept unmerged, in eval mode: bitsandbytes' inference kernels.
    quantized, tokenizer = loading.load_for_generation(*loading.tuned_model(cfg, use_adapter=True))
    assert isinstance(quantized, PeftModel)
    new = generate.generate(quantized, tokenizer, PROMPTS, max_new_tokens=6, progress=False)
    assert len(new) == 1 and isinstance(new[0], str)

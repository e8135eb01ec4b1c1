"""Every merge is checked against base + adapter, with a tolerance measured from float rounding (sftlib.outputs.merge)."""

import json

import pytest
import torch

from sftlib.config import ModelConfig
from sftlib.errors import SftlibError
from sftlib.models import embedded
from sftlib.outputs import merge

TINY = "embedded:tiny-random-llama"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A trained-looking LoRA adapter on the tiny model: random A and B, so it moves the logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(embedded.resolve(TINY), dtype=torch.float32)
    config = LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    folder = tmp_path_factory.mktemp("adapter")
    get_peft_model(base, config).save_pretrained(folder)
    return folder


def measured(adapter_dir, scale: float):
    """(difference, rounding, effect) for a merge that applies `scale` x the adapter (1.0: a correct merge)."""
    from sftlib.models import modeling

    model = merge.load_base_with_adapter(ModelConfig(path=TINY), adapter_dir, "float32").eval()
    ids = merge.sample_inputs(modeling.load_tokenizer(ModelConfig(path=TINY)))
    with model.disable_adapter():
        base = merge.logits(model, ids)
    reference = merge.logits(model, ids)
    model.merge_adapter()
    model.unmerge_adapter()
    with model.disable_adapter():
        rounding = float((merge.logits(model, ids) - base).abs().max())
    with torch.no_grad():  # a wrong merge: the adapter's update B·A scaled before it is added
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    merged = model.merge_and_unload()
    difference = float((merge.logits(merged, ids) - reference).abs().max())
    return difference, rounding, float((reference - base).abs().max())


def test_a_correct_merge_passes_and_real_mis_merges_exceed_the_measured_tolerance(adapter_dir):
    difference, rounding, effect = measured(adapter_dir, 1.0)
    assert effect > 100 * rounding > 0  # the adapter is far above float noise, which is measurable
    assert merge.check(difference, rounding, effect)["resolves_adapter"]
    for scale in (0.0, 0.9, 1.1):  # adapter left out; scaled 10% too little or too much
        with pytest.raises(SftlibError, match="more than float rounding allows"):
            merge.check(*measured(adapter_dir, scale))


def test_merge_adapter_writes_a_model_that_reloads_and_records_its_check(adapter_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    result = merge.merge_adapter(ModelConfig(path=TINY), adapter_dir, tmp_path, dtype="float32")
    assert result["max_logit_difference"] <= result["tolerance"] and result["resolves_adapter"]
    assert result["dtype"] == "float32" and result["merged_dir"] == str(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert not hasattr(reloaded, "peft_config") and (tmp_path / "model.safetensors").is_file()
    assert "tolerance" in merge.summary(result)
    json.dumps(result)  # recorded in run_info.json and notebook 04's record


def test_an_adapter_within_float_noise_is_reported_as_unresolved():
    result = merge.check(difference=0.0, rounding=1e-5, effect=2e-5)
    assert not result["resolves_adapter"] and "can't tell a merge from no merge" in merge.summary(
        {**result, "dtype": "float32", "was_4bit": False}
    )


def test_merge_refuses_a_folder_without_an_adapter(tmp_path):
    with pytest.raises(SftlibError, match="holds no LoRA adapter"):
        merge.merge_adapter(ModelConfig(path=TINY), tmp_path, tmp_path / "out")

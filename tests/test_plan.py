"""The training plan decides from measurements alone (pure, frozen records); only `apply` changes anything."""

import dataclasses
import logging
from types import SimpleNamespace

import pytest
import torch

from sftlib.models import attention
from sftlib.training.fast_path import lm_head, plan
from tests.test_fastpath import build, tiny_cfg


def args(world_size=1, device="cpu", batch=4, accumulation=2, **extra):
    """The SFTConfig fields the plan reads."""
    fields = dict(packing=False, padding_free=False, deepspeed=None, fsdp=None)
    fields.update(extra)
    return SimpleNamespace(
        world_size=world_size,
        device=torch.device(device),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        **fields,
    )


FACTS = plan.ModelFacts(
    placed=False,
    on_device=False,
    precision_seconds={"bf16": 0.01, "fp32": 0.04},
    flash_attention_installed=False,
)
MEMORY = plan.MemoryFacts(longest=100, loaded_bytes=2**30, bytes_per_token=2**16, free_bytes=2**34)


def test_decisions_are_frozen_records_that_depend_only_on_config_and_measurements(tmp_path):
    cfg = tiny_cfg(tmp_path, "training.bf16=null", "training.activation_checkpointing=null")
    setup = plan.decide_setup(cfg, args(), FACTS)
    assert setup == plan.decide_setup(cfg, args(), FACTS)
    assert (setup.precision, setup.frozen_weights_dtype, setup.move_to) == ("bf16", "bfloat16", "cpu")
    assert setup.attention == attention.NAME and setup.keep_freed_memory
    decided = plan.decide(cfg, args(), setup, MEMORY)
    assert decided == plan.decide(cfg, args(), setup, MEMORY)
    assert decided.split == "passes" and decided.pass_candidates and decided.pass_tokens is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        setup.precision = "fp32"
    placed = plan.decide_setup(cfg, args(), dataclasses.replace(FACTS, placed=True))
    assert placed.move_to is None  # a model placed when loaded (device_map, 4-bit) stays where it is


def test_several_processes_run_micro_batches_of_the_default_pass_size(tmp_path):
    cfg = tiny_cfg(tmp_path, "training.activation_checkpointing=null")
    setup = plan.decide_setup(cfg, args(world_size=2), FACTS)
    decided = plan.decide(cfg, args(world_size=2, batch=4, accumulation=4), setup, MEMORY)
    assert decided.split == "micro_batches" and decided.pass_tokens == plan.DEFAULT_PASS_TOKENS["cpu"]
    assert decided.micro_batch == 4  # 16 examples of <= 100 tokens: 4 fit 512 tokens and divide the step
    fields = plan.sft_fields(decided, cfg)
    assert (fields["per_device_train_batch_size"], fields["gradient_accumulation_steps"]) == (4, 4)
    assert fields["padding_free"] and fields["max_length"] is None  # TRL's padding-free collator


@pytest.mark.parametrize(
    ("device", "flash", "expected", "why"),
    [
        ("cpu", False, attention.NAME, "measured faster"),
        ("cuda", True, "flash_attention_2", "TRL recommends FlashAttention"),
        ("cuda", False, attention.NAME, "flash-attn is not installed"),
    ],
)
def test_attention_follows_the_measurement_on_cpu_and_trl_on_cuda(tmp_path, device, flash, expected, why):
    cfg = tiny_cfg(tmp_path)
    name, reason = plan.decide_attention(cfg, device, True, flash)
    assert name == expected and why in reason


def test_a_configured_attention_wins_and_without_the_fast_path_the_loaded_one_stays(tmp_path):
    told = tiny_cfg(tmp_path, "model.attn_implementation=eager")
    assert plan.decide_attention(told, "cuda", True, True) == ("eager", "set by model.attn_implementation")
    assert plan.decide_attention(tiny_cfg(tmp_path), "cpu", False, False)[0] is None


def test_the_configured_attention_trains_and_the_log_says_why(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path, "model.attn_implementation=sdpa", "training.max_steps=1")
    with caplog.at_level(logging.INFO, logger="sftlib"):
        trainer = build(cfg, fast=True)
    trainer.train()
    record = trainer.plan_record()
    assert record["attention"] == "sdpa" and record["attention_from"] == "set by model.attn_implementation"
    assert record["attention_calls"]["segments"] == 0  # transformers' sdpa ran every layer
    assert any("attention sdpa: set by model.attn_implementation" in r.message for r in caplog.records)


def test_the_lm_head_hook_leaves_calls_without_the_fused_head_alone():
    from transformers import AutoModelForCausalLM

    from sftlib.models import embedded

    model = AutoModelForCausalLM.from_pretrained(embedded.resolve("embedded:tiny-random-llama"))
    ids = torch.randint(100, 4000, (1, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :6] = -100
    with torch.no_grad():
        before = model(input_ids=ids, labels=labels).logits
        with lm_head.trained_positions_only(model):
            after = model(input_ids=ids, labels=labels).logits  # full logits: a custom loss, generation
    assert after.shape == before.shape and torch.equal(after, before)


def test_an_attention_whose_kernels_are_missing_is_one_error_naming_the_setting():
    import importlib.util

    from sftlib.config import ModelConfig
    from sftlib.errors import SftlibError
    from sftlib.models import modeling

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(SftlibError, match="model.attn_implementation='flash_attention_2'.*Fix: install"):
        modeling.load_model(
            ModelConfig(path="embedded:tiny-random-llama", attn_implementation="flash_attention_2")
        )

"""`sftlib bench` compares like with like: the same examples on both sides, real tokens only."""

import pytest

from sftlib import bench
from tests.conftest import write_chat_rows


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    """Both sides of the bench, 2 timed steps each on the tiny model."""
    tmp = tmp_path_factory.mktemp("bench")
    rows = write_chat_rows(tmp / "rows.jsonl", n=32)
    overrides = [
        f"dataset.name={rows}",
        "dataset.eval_split=null",
        "dataset.max_samples=null",
        "training.per_device_train_batch_size=2",
        "training.gradient_accumulation_steps=2",
        "training.chunk_tokens=1",  # one packed row per pass: the bench must count across chunks
    ]
    return {side: bench.run_side(side, "configs/tiny.yaml", overrides, steps=2) for side in bench.SIDES}


def test_both_sides_train_on_the_same_examples_and_count_the_same_real_and_trained_tokens(sides):
    base, ours = sides["baseline"], sides["sftlib"]
    assert base["examples"] == ours["examples"] == 2 * 4  # 2 timed steps of 2 x 2 examples
    assert base["real_tokens"] == ours["real_tokens"]  # padding is never counted
    assert base["trained_tokens"] == ours["trained_tokens"]
    assert base["collator"] == "DataCollatorForLanguageModeling" and ours["collator"] == "PackedCollator"
    assert (base["micro_batch_size"], base["gradient_accumulation_steps"]) == (2, 2)
    assert (ours["micro_batch_size"], ours["gradient_accumulation_steps"]) == (4, 1)
    assert base["activation_checkpointing"] and ours["chunk_tokens"] == 1
    assert ours["activation_mb_per_1k_tokens"] > 0 and base["activation_mb_per_1k_tokens"] is None


def test_model_flops_count_lora_as_four_n_and_full_fine_tuning_as_six_n():
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128)
    lengths, n = [10, 30], 1000
    attention = bench.train_flops(lengths, 0, config, lora=True)
    assert attention == 3 * 4 * 2 * 64 * (10 * 11 / 2 + 30 * 31 / 2)  # causal: position + 1 keys per token
    assert bench.train_flops(lengths, n, config, lora=True) - attention == 4 * n * 40
    assert bench.train_flops(lengths, n, config, lora=False) - attention == 6 * n * 40


def test_the_table_reports_both_sides_and_leaves_out_gpu_memory_on_a_cpu(sides):
    cpu = {"mfu_bf16": 0.1, "mfu_best": 0.05, "peak_gpu_mb": None}  # as on a CPU, wherever this test runs
    result = {
        "baseline": {**sides["baseline"], **cpu},
        "sftlib": {**sides["sftlib"], **cpu},
        "speedup": 2.0,
        "rss_ratio": 0.9,
        "gpu_memory_ratio": None,
        "ceilings": {"device": "cpu", "bf16_gflops": 60.0, "fp32_gflops": 300.0},
        "machine": {"load_average": (1.0, 1.0, 1.0), "cores": 2},
    }
    table = bench.format_table(result)
    assert "speedup 2.00x" in table and "rss_ratio 0.90" in table
    assert "GPU memory" not in table and "gpu_memory_ratio" not in table
    assert "<= 1" in table and "whole micro-batch" in table

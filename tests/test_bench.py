"""`sftlib bench` compares like with like: the same examples on both sides, real tokens only."""

import pytest

from sftlib.bench import compare, machine, side
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
        "training.pass_tokens=1",  # one example per pass: the bench must count across passes
    ]
    return {
        name: side.run_side(name, "configs/tiny.yaml", overrides, steps=2, warmup=1, profile_steps=1)
        for name in side.SIDES
    }


def test_both_sides_train_on_the_same_examples_and_count_the_same_real_and_trained_tokens(sides):
    base, ours = sides["baseline"], sides["sftlib"]
    assert base["examples"] == ours["examples"] == 2 * 4  # 2 timed steps of 2 x 2 examples
    assert base["real_tokens"] == ours["real_tokens"]  # padding is never counted
    assert base["trained_tokens"] == ours["trained_tokens"]
    assert base["collator"] == ours["collator"] == "DataCollatorForLanguageModeling"  # TRL's, on both sides
    assert ours["padding_free"] and not base["padding_free"]
    assert (base["micro_batch_size"], base["gradient_accumulation_steps"]) == (2, 2)
    assert (ours["micro_batch_size"], ours["gradient_accumulation_steps"]) == (4, 1)
    assert base["activation_checkpointing"] and ours["pass_tokens"] == 1
    assert ours["activation_mb_per_1k_tokens"] > 0 and base["activation_mb_per_1k_tokens"] is None
    assert ours["plan"]["passes"] >= 2 * 4 and base["plan"] is None


def test_the_profile_splits_a_step_into_the_named_categories(sides):
    from sftlib.bench.profiling import CATEGORIES

    for one in sides.values():
        profile = one["profile"]
        assert profile["steps"] == 1 and list(profile["share"]) == list(CATEGORIES)
        assert sum(profile["share"].values()) == pytest.approx(1.0, abs=0.01)
        assert profile["share"]["matmul"] > 0 and profile["share"]["LM head + loss (TRL)"] > 0


def test_the_machine_record_names_the_cpu_and_whether_bf16_is_native(monkeypatch):
    from sftlib.bench.machine import cpu_bf16_flags

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    m = machine.machine()
    assert m["cpu"] and m["cpu_bf16_flags"] == cpu_bf16_flags()
    assert m["cpu_native_bf16"] == bool(m["cpu_bf16_flags"]) or m["cpu_bf16_flags"] is None
    assert m["onednn_max_cpu_isa"] is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # the flags then overstate: say so
    assert machine.machine()["onednn_max_cpu_isa"] == "AVX512_CORE"


def test_cpu_flags_tell_native_bf16_on_x86_and_arm():
    from sftlib.bench.machine import cpu_bf16_flags

    assert cpu_bf16_flags("flags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n") == [
        "avx512_bf16",
        "amx_bf16",
    ]
    assert cpu_bf16_flags("flags\t\t: fpu avx512f avx512_vnni\n") == []
    assert cpu_bf16_flags("Features\t: fp asimd sve bf16 i8mm\n") == ["bf16"]
    assert cpu_bf16_flags("processor\t: 0\n") is None  # no flags listed: the caller times a matmul


def test_model_flops_count_lora_as_four_n_and_full_fine_tuning_as_six_n():
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128)
    lengths, n = [10, 30], 1000
    attention = side.train_flops(lengths, 0, config, lora=True)
    assert attention == 3 * 4 * 2 * 64 * (10 * 11 / 2 + 30 * 31 / 2)  # causal: position + 1 keys per token
    assert side.train_flops(lengths, n, config, lora=True) - attention == 4 * n * 40
    assert side.train_flops(lengths, n, config, lora=False) - attention == 6 * n * 40


def test_the_table_reports_both_sides_and_leaves_out_gpu_memory_on_a_cpu(sides):
    cpu = {"mfu_bf16": 0.1, "mfu_best": 0.05, "mfu_model": 0.2, "peak_gpu_mb": None}  # as on a CPU
    result = {
        "baseline": {**sides["baseline"], **cpu},
        "sftlib": {**sides["sftlib"], **cpu},
        "speedup": 2.0,
        "rss_ratio": 0.9,
        "gpu_memory_ratio": None,
        "ceilings": {"device": "cpu", "bf16_gflops": 60.0, "fp32_gflops": 300.0},
        "machine": {"load_average": (1.0, 1.0, 1.0), "cores": 2, "cpu": "AMD EPYC", "cpu_native_bf16": True},
    }
    table = compare.format_table(result)
    assert "speedup 2.00x" in table and "rss_ratio 0.90" in table
    assert "GPU memory" not in table and "gpu_memory_ratio" not in table
    assert "<= 1" in table and "whole micro-batch" in table
    assert "CPU: AMD EPYC (native bf16" in table and "profile (1 steps" in table
    assert "oneDNN capped" not in table
    result["machine"]["onednn_max_cpu_isa"] = "AVX512_CORE"
    assert "oneDNN capped at AVX512_CORE" in compare.format_table(result)


def test_without_native_bf16_only_fp32_ceilings_are_timed_and_the_table_says_so(monkeypatch, sides):
    from sftlib.config import load_config

    monkeypatch.setattr(machine, "cpu_has_fast_bf16", lambda: False)  # as on a CPU with emulated bf16
    assert machine.usable_precisions("cpu") == ("float32",)
    monkeypatch.setattr(
        machine, "model_shape_ceilings", lambda cfg, device, precisions: {"precisions": precisions}
    )
    ceilings = machine.ceilings(load_config("configs/tiny.yaml"), "cpu", machine.usable_precisions("cpu"))
    assert ceilings["bf16_gflops"] is None and ceilings["fp32_gflops"] > 0
    assert ceilings["model_shapes"] == {"precisions": ("float32",)}
    cpu = {"mfu_bf16": None, "mfu_best": 0.05, "mfu_model": 0.2, "peak_gpu_mb": None}
    result = {
        "baseline": {**sides["baseline"], **cpu},
        "sftlib": {**sides["sftlib"], **cpu},
        "speedup": 2.0,
        "rss_ratio": 0.9,
        "gpu_memory_ratio": None,
        "ceilings": ceilings,
        "machine": {"load_average": (1.0, 1.0, 1.0), "cores": 2, "cpu": "AMD EPYC", "cpu_native_bf16": False},
    }
    table = compare.format_table(result)
    assert "MFU (bf16 ceiling)" not in table and "(bf16 not timed: emulated here)" in table
    assert "bf16 0 GFLOP/s" not in table and "fp32" in table


def test_model_shape_ceilings_time_the_models_own_linear_layers():
    from sftlib.config import load_config

    cfg = load_config("configs/tiny.yaml")
    ceilings = machine.model_shape_ceilings(cfg, "cpu", tokens=(64,))
    assert ceilings["tokens_per_pass"] == [64]
    assert ceilings["bfloat16"]["64"] > 0 and ceilings["float32"]["64"] > 0
    hidden = 64  # the tiny model's hidden size; its LM head is the largest layer
    assert any(shape.startswith(f"{hidden}x") for shape in ceilings["shapes"])


def test_the_chat_mix_is_deterministic_chats_of_one_to_four_turns(tmp_path):
    import json

    from sftlib.bench.chat_mix import write_chat_mix

    first, again = write_chat_mix(tmp_path / "a.jsonl", n=200), write_chat_mix(tmp_path / "b.jsonl", n=200)
    assert first.read_bytes() == again.read_bytes()
    rows = [json.loads(line)["messages"] for line in first.read_text().splitlines()]
    assert len(rows) == 200
    for messages in rows:
        turns = [m for m in messages if m["role"] != "system"]
        assert 1 <= len(turns) // 2 <= 4 and len(turns) % 2 == 0
        assert [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2)
        assert all(m["content"] for m in messages)
    assert any(m[0]["role"] == "system" for m in rows) and any(m[0]["role"] == "user" for m in rows)

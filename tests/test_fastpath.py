"""The fast path changes how a step's examples are grouped, never what is learned: same losses, isolated examples."""

import dataclasses
import logging

import pytest
import torch

from sftlib.config import load_config
from sftlib.data import dataset, masking
from sftlib.errors import SftlibError
from sftlib.models import embedded
from sftlib.training import trainer as trainers
from sftlib.training.fast_path import measure, pass_tuner, plan
from sftlib.training.fast_path.passes import example_spans, examples_per_micro_batch, pack_rows, split_passes
from sftlib.views import tables
from tests.conftest import write_chat_rows

TINY = "embedded:tiny-random-llama"


def chat_examples(tokenizer, n=6):
    """Tokenized chats of varied lengths (labels -100 outside the assistant turns)."""
    out = []
    for i in range(n):
        user = " ".join(["When is the meeting"] * (1 + 3 * i))
        answer = " ".join([f"On day {i}."] * (1 + (5 * i) % 7))
        example = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
        (tokens,), _ = masking.tokenize_example(example, tokenizer)
        out.append({"input_ids": tokens.input_ids, "labels": tokens.labels})
    return out


def padding_free(examples, pad_token_id):
    """The step as TRL's padding-free collator lays it out: one row [1, T], the collator the fast path uses."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)(examples)


def padded_batch(examples, pad_token_id):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id)(examples)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(embedded.resolve(TINY), dtype=torch.float32)
    m.config.use_cache = False
    return m.eval()


def test_pack_rows_places_every_example_once_within_the_row_length():
    lengths = [500, 20, 300, 7, 212, 512, 64, 100]
    rows = pack_rows(lengths, 512)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)
    assert len(rows) == 4  # sum 1715 needs at least 4 rows of 512


def test_split_passes_keeps_every_example_whole_once_within_the_pass_size(tokenizer):
    examples = chat_examples(tokenizer)
    step = padding_free(examples, tokenizer.pad_token_id)
    passes = split_passes(step, pass_tokens=96)
    assert len(passes) > 1
    seen = []
    for one in passes:
        ids, labels, pos = one["input_ids"][0], one["labels"][0], one["position_ids"][0]
        starts = (pos == 0).nonzero().flatten().tolist()
        bounds = one["cu_seq_lens_q"].tolist()
        assert bounds[:-1] == starts and bounds[-1] == ids.numel()
        assert one["max_length_q"] == max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
        assert (labels[starts] == -100).all()  # no example is scored on a token of the one before it
        assert ids.numel() <= 96 or len(starts) == 1  # an example longer than a pass gets one to itself
        for a, b in zip(bounds, bounds[1:], strict=False):
            seen.append((tuple(ids[a:b].tolist()), labels[a:b].tolist()))
    assert len(seen) == len(examples)
    for e in examples:  # each example once, with its own labels (the first one aside)
        match = [lab for ids, lab in seen if ids == tuple(e["input_ids"])]
        assert len(match) == 1 and match[0][1:] == e["labels"][1:]


def test_packed_logits_equal_each_sequence_run_alone(model, tokenizer):
    examples = chat_examples(tokenizer)
    step = padding_free(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        packed = model(input_ids=step["input_ids"], position_ids=step["position_ids"], use_cache=False).logits
        for start, end in example_spans(step):
            alone = model(input_ids=step["input_ids"][:, start:end], use_cache=False).logits
            torch.testing.assert_close(packed[:, start:end], alone, atol=1e-5, rtol=1e-5)


def test_a_kv_cache_in_train_mode_would_let_packed_examples_attend_to_each_other(model, tokenizer):
    """Why every forward pass of ours runs with use_cache=False: with a cache, transformers skips packing detection."""
    step = padding_free(chat_examples(tokenizer, n=2), tokenizer.pad_token_id)
    second = slice(example_spans(step)[1][0], None)
    with torch.no_grad():
        kwargs = {"input_ids": step["input_ids"], "position_ids": step["position_ids"]}
        isolated = model(**kwargs, use_cache=False).logits[:, second]
        leaky = model(**kwargs, use_cache=True).logits[:, second]
    assert (isolated - leaky).abs().max() > 1e-3


def tiny_cfg(tmp_path, *overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = write_chat_rows(tmp_path / "chat.jsonl", n=32)
    base = [
        f"dataset.name={rows}",
        "dataset.eval_split=null",
        "dataset.max_samples=null",
        f"training.output_dir={tmp_path / 'out'}",
    ]
    return load_config("configs/tiny.yaml", base + list(overrides))


def build(cfg, fast: bool):
    from trl import SFTTrainer

    from sftlib.models import modeling
    from sftlib.training.sft_args import sft_config

    tokenizer = modeling.load_tokenizer(cfg.model)
    data = dataset.prepare(cfg, tokenizer, splits=("train",))
    torch.manual_seed(0)
    model = modeling.load_model(cfg.model)
    model.config.use_cache = False
    peft_config = modeling.lora_config(cfg.model, model)
    if fast:
        return trainers.build_trainer(cfg, model, tokenizer, data.train, None, peft_config)
    return SFTTrainer(
        model=model,
        args=sft_config(cfg),
        train_dataset=data.train,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def test_fast_trainer_loss_equals_the_plain_padded_loss_in_fp32(tmp_path):
    cfg = tiny_cfg(
        tmp_path, "training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=4"
    )
    plain, fast = build(cfg, fast=False), build(cfg, fast=True)
    assert fast.args.per_device_train_batch_size == 8 and fast.args.gradient_accumulation_steps == 1
    assert isinstance(fast, trainers.SftlibTrainer) and fast.plan.split == "passes"
    assert fast.args.padding_free and fast.data_collator.padding_free  # TRL's own padding-free collator
    examples = [plain.train_dataset[i] for i in range(8)]
    for t in (plain, fast):
        t.model.train()
    seen = {}

    def spy(module, args, kwargs):
        seen["use_cache"], seen["past_key_values"] = kwargs.get("use_cache"), kwargs.get("past_key_values")

    hook = fast.model.get_base_model().model.register_forward_pre_hook(spy, with_kwargs=True)
    # _prepare_inputs: onto the trainer's device (a GPU where there is one), as training_step does
    padded = plain._prepare_inputs(padded_batch(examples, plain.processing_class.pad_token_id))
    packed = fast._prepare_inputs(fast.data_collator(examples))
    n_items = int((padded["labels"][:, 1:] != -100).sum())
    loss_plain = plain.compute_loss(plain.model, dict(padded), num_items_in_batch=n_items)
    loss_fast = fast.compute_loss(fast.model, dict(packed), num_items_in_batch=n_items)
    hook.remove()
    assert seen == {"use_cache": False, "past_key_values": None}
    torch.testing.assert_close(loss_fast, loss_plain, atol=1e-4, rtol=0)


@pytest.mark.parametrize("pass_tokens", [10**6, 1], ids=["one-pass", "a-pass-per-example"])
def test_fast_training_follows_the_plain_trajectory(tmp_path, pass_tokens):
    """Same examples per optimizer step: the losses of three steps match the plain run's, in one
    forward/backward pass per step or in one per example; TRL counts the same tokens."""
    steps = ["training.max_steps=3", "training.logging_steps=1", "training.learning_rate=0.01"]
    batch = ["training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=4"]
    logs = {}
    for fast in (False, True):
        size = [f"training.pass_tokens={pass_tokens}"] if fast else []
        trainer = build(tiny_cfg(tmp_path / str(fast), *steps, *batch, *size), fast)
        trainer.train()
        logs[fast] = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs[True]) == 3
    passes = trainer.passes_run
    assert trainer.plan_record()["attention_calls"]["segments"] > 0  # each example attended alone
    assert passes == 3 if pass_tokens > 1 else passes == 3 * 8  # one example per pass: 8 per step
    losses = {k: torch.tensor([h["loss"] for h in v]) for k, v in logs.items()}
    torch.testing.assert_close(losses[True], losses[False], atol=1e-4, rtol=0)
    # TRL's own metrics, on both paths: real tokens counted the same (no padding on the fast path)
    assert [h["num_tokens"] for h in logs[True]][-1] <= [h["num_tokens"] for h in logs[False]][-1]
    assert all("mean_token_accuracy" in h and "entropy" in h for h in logs[True])


def test_the_fast_path_counts_exactly_the_real_tokens(tmp_path):
    cfg = tiny_cfg(tmp_path, "training.max_steps=2", "training.logging_steps=1", "training.pass_tokens=1")
    trainer = build(cfg, fast=True)
    real = []
    collate = trainer.data_collator

    def counting(examples):
        real.append(sum(len(e["input_ids"]) for e in examples))
        return collate(examples)

    trainer.data_collator = counting
    trainer.train()
    assert trainer.state.log_history[-2]["num_tokens"] == sum(real[:2])


def test_a_step_in_passes_gives_the_gradient_of_one_pass(tmp_path):
    """Forward/backward over one example at a time sums to the whole step's loss and gradient."""
    cfg = tiny_cfg(tmp_path, "training.per_device_train_batch_size=8", "training.learning_rate=0.01")
    trainer = build(cfg, fast=True)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    n_items = int((batch["labels"][:, 1:] != -100).sum())
    results = {}
    for pass_tokens in (10**6, 1):
        trainer.tuner = None
        trainer.plan = dataclasses.replace(trainer.plan, pass_tokens=pass_tokens, pass_candidates=None)
        trainer.model.zero_grad()
        loss = trainer.training_step(trainer.model, dict(batch), num_items_in_batch=n_items)
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        results[pass_tokens] = loss, grads
    (loss_one, grads_one), (loss_each, grads_each) = results[10**6], results[1]
    torch.testing.assert_close(loss_each, loss_one, atol=1e-6, rtol=1e-5)
    assert grads_one and any(g.abs().sum() > 0 for g in grads_one.values())  # lora_A: 0 while B is 0
    for name, grad in grads_one.items():
        torch.testing.assert_close(grads_each[name], grad, atol=1e-7, rtol=1e-4)


def test_the_trainer_is_one_class_with_its_plan_and_patches_nothing(tmp_path):
    cfg = tiny_cfg(tmp_path, "training.max_steps=1")
    trainer = build(cfg, fast=True)
    assert type(trainer) is trainers.SftlibTrainer and type(trainer).__module__ == "sftlib.training.trainer"
    assert "training_step" not in vars(trainer) and "compute_loss" not in vars(trainers.SftlibTrainer)
    assert not hasattr(trainer, "sftlib_plan")
    with pytest.raises(dataclasses.FrozenInstanceError):
        trainer.plan.pass_tokens = 1  # the plan is a record; what changes during the run is the trainer's
    record = trainer.plan_record()
    assert (
        record["fast_path_on"]
        and record["precision"] == "fp32"
        and "training.bf16" in record["precision_from"]
    )


def test_pass_size_is_timed_on_the_first_steps_and_recorded(tmp_path, caplog):
    cfg = tiny_cfg(
        tmp_path,
        "training.max_steps=8",
        "training.per_device_train_batch_size=16",
        "training.logging_steps=8",
        "training.activation_checkpointing=null",
    )
    trainer = build(cfg, fast=True)
    tuner = trainer.tuner
    assert tuner is not None and len(tuner.candidates) >= 2
    assert list(trainer.plan.pass_candidates) == tuner.candidates and trainer.plan.pass_tokens is None
    with caplog.at_level(logging.INFO, logger="sftlib"):
        trainer.train()
    record = trainer.plan_record()
    timing = record["pass_timing"]
    assert timing["chosen"] in tuner.candidates and record["pass_tokens"] == timing["chosen"]
    assert set(timing["timed_steps"]) == {str(c) for c in tuner.candidates}
    assert all(len(runs) == pass_tuner.TIMED_STEPS for runs in timing["timed_steps"].values())
    assert any(r.message.startswith(f"pass_tokens: {timing['chosen']} (timed") for r in caplog.records)
    # checkpointing was decided for the largest candidate, which the tuner may keep
    assert f"for {max(tuner.candidates)} tokens" in record["checkpointing_from"]
    # notebook 03 shows each decision with its reason
    rows = {row["key"]: row["value"] for row in tables.plan_rows(record)}
    assert rows["pass_tokens"].startswith(f"{timing['chosen']}: timed on the first steps (tokens/s")
    assert rows["precision"].startswith(record["precision"]) and record["precision_from"] in rows["precision"]
    assert rows["activation checkpointing"].endswith(record["checkpointing_from"])


def test_the_tuner_keeps_the_smallest_pass_within_five_percent_of_the_fastest():
    tuner = pass_tuner.PassTuner([128, 256, 512])
    speeds = {128: 100.0, 256: 192.0, 512: 200.0}  # tokens/s
    assert tuner.size_for_next_step() == 128  # the untimed first step
    tuner.record(128, 1000, 99.0)
    for _ in range(pass_tuner.TIMED_STEPS):
        for size in (128, 256, 512):
            assert tuner.size_for_next_step() == size
            tuner.record(size, 1000, 1000 / speeds[size])
    assert tuner.chosen == 256 and tuner.size_for_next_step() == 256  # 192 >= 0.95 x 200
    assert pass_tuner.PassTuner.tuning_steps(3) == 1 + 3 * pass_tuner.TIMED_STEPS


def test_pass_candidates_double_up_to_the_whole_step_within_the_cap():
    assert pass_tuner.pass_candidates(whole_step=544, cap_tokens=750) == [
        256,
        512,
        544,
    ]  # 544: the whole step
    assert pass_tuner.pass_candidates(whole_step=8192, cap_tokens=529) == [128, 256, 512]
    assert pass_tuner.pass_candidates(whole_step=8192, cap_tokens=300) == [128, 256]
    assert pass_tuner.pass_candidates(whole_step=100, cap_tokens=10**6) == [128]


def test_frozen_weights_go_to_bf16_while_adapters_and_buffers_keep_fp32(model):
    import copy

    from peft import LoraConfig, get_peft_model

    m = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj"]))
    buffers = {n: b.dtype for n, b in m.named_buffers()}
    plan.cast_weights(m, torch.bfloat16)
    for name, p in m.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), name
    assert {n: b.dtype for n, b in m.named_buffers()} == buffers  # rotary frequencies stay fp32
    base = m.get_base_model()
    assert base.config.tie_word_embeddings and base.lm_head.weight is base.model.embed_tokens.weight


def test_unset_precision_is_timed_and_bf16_stores_the_frozen_base_in_bf16(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(measure, "time_precisions", lambda *a, **k: {"bf16": 0.01, "fp32": 0.04})
    with caplog.at_level(logging.INFO, logger="sftlib"):
        trainer = build(tiny_cfg(tmp_path, "training.bf16=null", "training.max_steps=1"), fast=True)
    record = trainer.plan_record()
    assert record["precision"] == "bf16" and record["precision_seconds"] == {"bf16": 0.01, "fp32": 0.04}
    assert record["frozen_weights_dtype"] == "bfloat16" and trainer.args.bf16  # autocast runs the adapters
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    frozen = [p for p in trainer.model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    # every side effect is the plan's apply step, named in the log and the record
    applied = [r.message for r in caplog.records if r.message.startswith("plan: ")]
    assert applied == [f"plan: {line}" for line in record["applied"]]
    assert any("stored in bfloat16" in line for line in record["applied"])
    assert any(line.startswith("attention implementation: sftlib_per_example") for line in record["applied"])
    assert any(line.startswith("allocator: ") for line in record["applied"])
    monkeypatch.setattr(measure, "time_precisions", lambda *a, **k: {"bf16": 0.05, "fp32": 0.01})
    slow_bf16 = build(tiny_cfg(tmp_path / "b", "training.bf16=null", "training.max_steps=1"), fast=True)
    assert slow_bf16.plan.setup.precision == "fp32" and not slow_bf16.args.bf16
    assert all(p.dtype == torch.float32 for p in slow_bf16.model.parameters())


def test_precision_timing_stops_once_one_precision_is_clearly_slower(monkeypatch):
    """Emulated bf16 is tens of times slower: the smallest shape settles it, the LM head is never timed."""
    from sftlib.training.fast_path import timing

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 32), torch.nn.Linear(32, 512))
    timed = []

    def fake(shapes, tokens, dtype, device, weight_grads):  # seconds proportional to the work
        timed.append((*shapes, dtype))
        (k, n), count = next(iter(shapes.items()))
        return count * k * n * (1e-6 if dtype == "float32" else slowdown)

    monkeypatch.setattr(timing, "model_matmul_seconds", fake)
    slowdown = 40e-6  # emulated bf16
    seconds = measure.time_precisions(model, 512, "cpu", False)
    assert [shape for shape, _ in timed] == [(8, 8), (8, 8)] and seconds["bf16"] > seconds["fp32"]
    timed.clear()
    slowdown = 1.5e-6  # close: every shape is timed
    seconds = measure.time_precisions(model, 512, "cpu", False)
    assert {shape for shape, _ in timed} == {(8, 8), (8, 32), (32, 512)} and len(timed) == 6
    assert seconds == {
        "bf16": round(1.5e-6 * (64 + 256 + 16384), 5),
        "fp32": round(1e-6 * (64 + 256 + 16384), 5),
    }


def test_checkpointing_is_decided_from_measured_memory_or_told(tmp_path):
    cfg = tiny_cfg(tmp_path, "training.activation_checkpointing=null")

    def decide(cfg, bytes_per_token, free_bytes, sharded, fast_path_on=True):
        return plan.decide_checkpointing(
            cfg,
            None,
            bytes_per_token=bytes_per_token,
            free_bytes=free_bytes,
            sharded=sharded,
            pass_tokens=256,
            longest=100,
            fast_path_on=fast_path_on,
        )

    on, why = decide(cfg, 2**20, 2**31, False)
    assert not on and "fit in" in why
    on, why = decide(cfg, 2**20, 3 * 2**27, False)  # 256 MiB > half of 384 MiB
    assert on and "exceed" in why
    on, why = decide(cfg, None, None, True, fast_path_on=False)
    assert on and "training.activation_checkpointing: false" in why  # sharded: a logged decision
    told = tiny_cfg(tmp_path, "training.activation_checkpointing=false")
    assert decide(told, None, None, False) == (False, "set by training.activation_checkpointing")


def test_unmeasurable_activation_memory_is_an_error_that_says_what_to_set(tmp_path):
    cfg = tiny_cfg(tmp_path, "training.activation_checkpointing=null")
    with pytest.raises(SftlibError, match="activation_checkpointing: true"):
        plan.decide_checkpointing(
            cfg,
            None,
            bytes_per_token=None,
            free_bytes=2**31,
            sharded=False,
            pass_tokens=256,
            longest=100,
            fast_path_on=True,
        )


def test_without_the_fast_path_the_log_and_record_say_why_and_checkpointing_is_decided(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path, "training.packing=true", "training.activation_checkpointing=null")
    with caplog.at_level(logging.INFO, logger="sftlib"):
        trainer = build(cfg, fast=True)
    record = trainer.plan_record()
    assert not record["fast_path_on"] and "packing" in record["why"] and record["split"] == "none"
    assert any("fast path off: training.packing" in r.message for r in caplog.records)
    assert "half the free memory" in record["checkpointing_from"]  # measured, not TRL's default True
    assert trainer.args.activation_checkpointing is record["activation_checkpointing"] is False


def test_pass_tokens_is_validated_refused_without_the_fast_path_and_not_passed_to_trl(tmp_path):
    from sftlib.training.sft_args import sft_config

    cfg = tiny_cfg(tmp_path, "training.pass_tokens=64", "training.activation_checkpointing=null")
    assert cfg.training["pass_tokens"] == 64 == cfg.pass_tokens
    assert not hasattr(sft_config(cfg), "pass_tokens")
    for bad in ("0", "'many'", "1.5"):
        with pytest.raises(SftlibError, match="pass_tokens"):
            tiny_cfg(tmp_path, f"training.pass_tokens={bad}")
    with pytest.raises(SftlibError, match="pass_tokens=64 is set, but .* off: training.packing"):
        build(tiny_cfg(tmp_path, "training.pass_tokens=64", "training.packing=true"), fast=True)


def test_the_old_chunk_tokens_key_still_works_and_its_warning_names_pass_tokens(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="sftlib"):
        cfg = tiny_cfg(tmp_path, "training.chunk_tokens=64")
    assert cfg.pass_tokens == 64 and "chunk_tokens" not in cfg.training  # resolved_config.yaml: the new name
    assert any(
        "training.chunk_tokens is deprecated" in r.message and "training.pass_tokens" in r.message
        for r in caplog.records
    )
    with pytest.raises(SftlibError, match="both set"):
        tiny_cfg(tmp_path, "training.chunk_tokens=64", "training.pass_tokens=32")


def test_several_processes_split_a_step_into_equal_micro_batches_of_whole_examples():
    assert examples_per_micro_batch(16, longest=100, pass_tokens=4096) == 16
    assert examples_per_micro_batch(16, longest=512, pass_tokens=4096) == 8
    assert examples_per_micro_batch(12, longest=512, pass_tokens=2048) == 4
    assert examples_per_micro_batch(8, longest=68, pass_tokens=128) == 1  # one example always fits
    assert examples_per_micro_batch(6, longest=1000, pass_tokens=128) == 1


def test_measured_activation_memory_follows_what_autograd_keeps(model):
    """Per token, independent of length; checkpointing keeps only each layer's input; the RNG is untouched."""
    per_token = measure.activation_bytes_per_token(model, tokens=32)
    assert per_token == measure.activation_bytes_per_token(model, tokens=64)
    text = model.config
    layer_input = text.num_hidden_layers * text.hidden_size * 4  # fp32 hidden state per layer
    assert per_token > 4 * layer_input
    state = torch.random.get_rng_state()
    model.activation_checkpointing_enable()
    try:
        checkpointed = measure.activation_bytes_per_token(model, tokens=32)
    finally:
        model.activation_checkpointing_disable()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert layer_input <= checkpointed < per_token / 4

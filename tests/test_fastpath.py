"""The fast path changes the layout of a batch, never what is learned: same losses, isolated examples."""

import pytest
import torch

from sftlib import dataset, embedded, fastpath, masking
from sftlib.config import load_config
from sftlib.fastpath import PackedCollator, pack_rows, plan
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


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(embedded.resolve(TINY), dtype=torch.float32)
    m.config.use_cache = False
    return m.eval()


def padded_batch(examples, pad_token_id):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id)(examples)


def per_token_losses(logits, labels):
    """{(row, position): loss} of every position whose next token is trained."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    target = labels[:, 1:]
    mask = target != -100
    nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll[mask]


def test_pack_rows_places_every_example_once_within_the_row_length():
    lengths = [500, 20, 300, 7, 212, 512, 64, 100]
    rows = pack_rows(lengths, 512)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)
    assert len(rows) == 4  # sum 1715 needs at least 4 rows of 512


def test_packed_collator_restarts_positions_and_never_scores_across_examples(tokenizer):
    examples = chat_examples(tokenizer)
    batch = PackedCollator(pad_token_id=tokenizer.pad_token_id, max_length=128)(examples)
    assert "attention_mask" not in batch and batch["use_cache"] is False
    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    starts = pos == 0
    assert int(starts.sum()) >= len(examples)
    assert (labels[starts] == -100).all()
    segments = []
    for r in range(ids.shape[0]):
        bounds = starts[r].nonzero().flatten().tolist() + [ids.shape[1]]
        segments += [
            (tuple(ids[r, a:b].tolist()), labels[r, a:b]) for a, b in zip(bounds, bounds[1:], strict=False)
        ]
    for e in examples:  # every example is one segment, with its own labels (the first one aside)
        match = [lab for seg, lab in segments if seg == tuple(e["input_ids"])]
        assert match and match[0][1:].tolist() == e["labels"][1:]
    real = {tuple(e["input_ids"]) for e in examples}
    padding = [lab for seg, lab in segments if seg not in real]
    assert len(padding) == len(segments) - len(examples) and all((lab == -100).all() for lab in padding)


def test_packed_logits_equal_each_sequence_run_alone(model, tokenizer):
    examples = chat_examples(tokenizer)
    batch = PackedCollator(pad_token_id=tokenizer.pad_token_id, max_length=160)(examples)
    assert batch["input_ids"].shape[0] < len(examples)  # really packed
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        for r in range(batch["input_ids"].shape[0]):
            starts = (batch["position_ids"][r] == 0).nonzero().flatten().tolist() + [
                batch["input_ids"].shape[1]
            ]
            for a, b in zip(starts, starts[1:], strict=False):
                alone = model(input_ids=batch["input_ids"][r : r + 1, a:b], use_cache=False).logits
                torch.testing.assert_close(packed[r : r + 1, a:b], alone, atol=1e-5, rtol=1e-5)


def test_a_kv_cache_in_train_mode_would_let_packed_examples_attend_to_each_other(model, tokenizer):
    """Why the path forces use_cache=False: with a cache, transformers skips packed-row detection."""
    examples = chat_examples(tokenizer, n=2)
    batch = PackedCollator(pad_token_id=tokenizer.pad_token_id, max_length=512)(examples)
    assert batch["input_ids"].shape[0] == 1
    second = slice((batch["position_ids"][0] == 0).nonzero().flatten()[1].item(), None)
    with torch.no_grad():
        kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
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

    from sftlib import modeling
    from sftlib.train import sft_config

    tokenizer = modeling.load_tokenizer(cfg.model)
    data = dataset.prepare(cfg, tokenizer, splits=("train",))
    torch.manual_seed(0)
    model = modeling.load_model(cfg.model)
    model.config.use_cache = False
    args = sft_config(cfg)
    peft_config = modeling.lora_config(cfg.model, model)
    if fast:
        return fastpath.build_trainer(cfg, args, model, tokenizer, data.train, None, peft_config)
    return SFTTrainer(
        model=model, args=args, train_dataset=data.train, processing_class=tokenizer, peft_config=peft_config
    )


def test_fast_trainer_loss_equals_the_plain_padded_loss_in_fp32(tmp_path):
    cfg = tiny_cfg(
        tmp_path, "training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=4"
    )
    plain, fast = build(cfg, fast=False), build(cfg, fast=True)
    assert fast.args.per_device_train_batch_size == 8 and fast.args.gradient_accumulation_steps == 1
    assert type(fast).__name__ == "FastSFTTrainer"  # the loss under test is the fast one
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


@pytest.mark.parametrize("chunk_tokens", [10**6, 1], ids=["one-pass", "a-pass-per-row"])
def test_fast_training_follows_the_plain_trajectory(tmp_path, chunk_tokens):
    """Same examples per optimizer step: the losses of three steps match the plain run's, in one
    forward/backward pass per step or in one per packed row."""
    steps = ["training.max_steps=3", "training.logging_steps=1", "training.learning_rate=0.01"]
    batch = ["training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=4"]
    chunk = [f"training.chunk_tokens={chunk_tokens}"]
    losses = {}
    for fast in (False, True):
        cfg = tiny_cfg(tmp_path / str(fast), *steps, *batch, *chunk)
        trainer = build(cfg, fast)
        trainer.train()
        losses[fast] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses[True]) == 3
    passes = trainer.sftlib_plan.passes
    assert passes == 3 if chunk_tokens > 1 else passes > 3  # one row per pass: several passes per step
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), atol=1e-4, rtol=0)


def test_a_chunked_step_gives_the_gradient_of_one_pass(tmp_path):
    """Forward/backward over one row at a time sums to the whole step's loss and gradient."""
    cfg = tiny_cfg(tmp_path, "training.per_device_train_batch_size=8", "training.learning_rate=0.01")
    trainer = build(cfg, fast=True)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    n_items = int((batch["labels"][:, 1:] != -100).sum())
    assert batch["input_ids"].shape[0] >= 2  # several rows to split
    results = {}
    for chunk_tokens in (10**6, 1):
        trainer.sftlib_plan.chunk_tokens = chunk_tokens
        trainer.model.zero_grad()
        loss = trainer.training_step(trainer.model, dict(batch), num_items_in_batch=n_items)
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        results[chunk_tokens] = loss, grads
    (loss_one, grads_one), (loss_rows, grads_rows) = results[10**6], results[1]
    torch.testing.assert_close(loss_rows, loss_one, atol=1e-6, rtol=1e-5)
    assert grads_one and any(g.abs().sum() > 0 for g in grads_one.values())  # lora_A: 0 while B is 0
    for name, grad in grads_one.items():
        torch.testing.assert_close(grads_rows[name], grad, atol=1e-7, rtol=1e-4)


def test_plan_checkpoints_only_when_one_chunk_would_not_fit_or_when_told():
    fits = plan(2, 8, max_length=512, chunk_tokens=256, bytes_per_token=2**20, free_bytes=2**31)
    assert fits.examples_per_step == 16 and not fits.activation_checkpointing
    # a chunk holds at least one row: 512 tokens x 1 MiB > half of 768 MiB
    tight = plan(2, 8, max_length=512, chunk_tokens=256, bytes_per_token=2**20, free_bytes=3 * 2**28)
    assert tight.activation_checkpointing and "exceed" in tight.why
    assert plan(2, 8, 512, 256, 2**20, 2**31, checkpointing=True).activation_checkpointing
    assert not plan(2, 8, 512, 256, 2**20, 2**30, checkpointing=False).activation_checkpointing
    assert not plan(2, 8, 512, 256, None, None).activation_checkpointing
    assert fits.rows_per_chunk(128) == 2 and fits.rows_per_chunk(512) == 1


def test_several_processes_split_a_step_into_equal_micro_batches_of_whole_examples():
    assert fastpath.examples_per_micro_batch(16, longest=100, chunk_tokens=4096) == 16
    assert fastpath.examples_per_micro_batch(16, longest=512, chunk_tokens=4096) == 8
    assert fastpath.examples_per_micro_batch(12, longest=512, chunk_tokens=2048) == 4
    assert fastpath.examples_per_micro_batch(8, longest=68, chunk_tokens=128) == 1  # one example always fits
    assert fastpath.examples_per_micro_batch(6, longest=1000, chunk_tokens=128) == 1


def test_measured_activation_memory_follows_what_autograd_keeps(model):
    """Per token, independent of length; checkpointing keeps only each layer's input; the RNG is untouched."""
    per_token = fastpath.activation_bytes_per_token(model, tokens=32)
    assert per_token == fastpath.activation_bytes_per_token(model, tokens=64)
    text = model.config
    layer_input = text.num_hidden_layers * text.hidden_size * 4  # fp32 hidden state per layer
    assert per_token > 4 * layer_input
    state = torch.random.get_rng_state()
    model.activation_checkpointing_enable()
    try:
        checkpointed = fastpath.activation_bytes_per_token(model, tokens=32)
    finally:
        model.activation_checkpointing_disable()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert layer_input <= checkpointed < per_token / 4


def test_chunk_tokens_is_validated_and_not_passed_to_trl(tmp_path):
    from sftlib.errors import SftlibError
    from sftlib.train import sft_config

    cfg = tiny_cfg(tmp_path, "training.chunk_tokens=64", "training.activation_checkpointing=null")
    assert cfg.training["chunk_tokens"] == 64
    assert not hasattr(sft_config(cfg), "chunk_tokens")
    for bad in ("0", "'many'", "1.5"):
        with pytest.raises(SftlibError, match="chunk_tokens"):
            tiny_cfg(tmp_path, f"training.chunk_tokens={bad}")

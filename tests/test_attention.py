"""Per-example attention gives what transformers' block-diagonal mask gives, and nothing crosses examples."""

import pytest
import torch

from sftlib.models import attention, embedded


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(
        embedded.resolve("embedded:tiny-random-llama"), dtype=torch.float32
    )
    m.config.use_cache = False
    yield m
    m.set_attn_implementation("sdpa")


def padding_free(lengths, seed=0):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    g = torch.Generator().manual_seed(seed)
    examples = [{"input_ids": torch.randint(100, 4000, (n,), generator=g).tolist()} for n in lengths]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    return {k: batch[k] for k in ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k")}


def test_examples_are_grouped_by_length_longest_first():
    bounds = [0, 30, 42, 72, 79, 143]  # lengths 30, 12, 30, 7, 64
    assert attention.length_groups(bounds) == [[4], [0, 2], [1], [3]]
    assert attention.length_groups([0, 65, 128, 196], ratio=0.7) == [[2, 0, 1]]


@pytest.mark.parametrize("lengths", [[30, 12, 30, 7, 64], [5], [16, 16, 16, 16]])
def test_per_example_attention_equals_the_block_diagonal_mask_in_logits_and_gradients(model, lengths):
    batch = padding_free(lengths)
    results = {}
    for impl in ("sdpa", attention.register()):
        model.set_attn_implementation(impl)
        model.zero_grad()
        before = attention.CALLS["segments"]
        logits = model(**batch, use_cache=False).logits
        logits.pow(2).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[impl] = logits.detach(), grads
        ran = attention.CALLS["segments"] - before
        assert ran == (model.config.num_hidden_layers if impl == attention.NAME else 0)
    (ref, ref_grads), (ours, our_grads) = results.values()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(our_grads[name], grad, atol=1e-6, rtol=1e-4)


def test_a_token_never_sees_another_example(model):
    """Changing the first example leaves every logit of the second unchanged."""
    model.set_attn_implementation(attention.register())
    a, b = padding_free([20, 25], seed=1), padding_free([20, 25], seed=1)
    b["input_ids"][0, :20] = torch.randint(100, 4000, (20,), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        la, lb = (model(**x, use_cache=False).logits[0, 20:] for x in (a, b))
    torch.testing.assert_close(la, lb, atol=1e-6, rtol=0)


def test_without_sequence_boundaries_it_is_transformers_sdpa(model):
    """Generation with a KV cache and padded batches carry no boundaries: they run sdpa with its mask."""
    model.set_attn_implementation(attention.register())
    ids = torch.randint(100, 4000, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    before = attention.CALLS["fallback"]
    with torch.no_grad():
        ours = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
        model.set_attn_implementation("sdpa")
        ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert attention.CALLS["fallback"] > before
    assert torch.equal(ours, ref)

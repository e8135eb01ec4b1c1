"""Attention for padding-free passes: each example attends within itself, with no [T, T] mask.

transformers' `sdpa` on a padding-free row [1, T] builds a block-diagonal causal mask and runs SDPA
over all T x T query/key pairs below the diagonal, most of them masked when examples are short
(the performance notes give the profile). Here the
examples (`cu_seq_lens_q`, which TRL's padding-free collator and `sftlib.training.fast_path.passes.split_passes` give
every pass) are grouped by length, each group padded at the end to its longest example and run as one
causal batch: the work is that of each example alone, up to the padding within a group. On a CPU,
short examples run as matmul + softmax, which beats SDPA's fused CPU kernel at these sizes (see
MATMUL_ATTENTION_MAX).

Registered with transformers' public `AttentionInterface` as "sftlib_per_example" (the name
`model.attn_implementation` takes), with the `sdpa` mask function (`AttentionMaskInterface`), so anything without sequence boundaries (evaluation with an attention mask, generation
with a KV cache) runs transformers' own `sdpa_attention_forward` unchanged.
"""

from __future__ import annotations

import collections

NAME = "sftlib_per_example"
# Examples whose length is at least this share of their group's longest share one SDPA call: the
# padded work is then at most 1 / 0.7^2 ~ 2x that of the examples alone.
GROUP_RATIO = 0.7


# How many attention calls ran per example ("segments") and how many fell back to transformers' sdpa
# ("fallback"), since import: run_info.json reports the difference over a run.
CALLS: collections.Counter = collections.Counter(segments=0, fallback=0)


def length_groups(bounds: list[int], ratio: float = GROUP_RATIO) -> list[list[int]]:
    """Indices of the examples delimited by `bounds` (cumulative, starting at 0), grouped by length:
    longest first, an example joins the current group while its length is >= ratio x the group's first."""
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] >= ratio * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class _Groups:
    """Gather indices for one pass [1, T]: per group, its examples' positions padded to the group's longest
    ([examples x longest], flattened; padding points at position 0, whose outputs are dropped and whose
    gradients are therefore zero), and `source`: where each row position's output sits among the groups'."""

    def __init__(self, cu_seq_lens, device):
        import torch

        bounds = cu_seq_lens.tolist()
        self.groups = []  # (flat index, examples, longest)
        source = torch.empty(bounds[-1], dtype=torch.long)
        offset = 0
        for members in length_groups(bounds):
            longest = bounds[members[0] + 1] - bounds[members[0]]
            index = torch.zeros((len(members), longest), dtype=torch.long)
            for row, i in enumerate(members):
                n = bounds[i + 1] - bounds[i]
                index[row, :n] = torch.arange(bounds[i], bounds[i + 1])
                source[bounds[i] : bounds[i + 1]] = offset + row * longest + torch.arange(n)
            self.groups.append((index.flatten().to(device), len(members), longest))
            offset += index.numel()
        self.source = source.to(device)


_last: tuple = (None, None)  # (cu_seq_lens tensor, its _Groups): every layer of a pass reuses them


def _groups(cu_seq_lens, device) -> _Groups:
    global _last
    if _last[0] is not cu_seq_lens:  # holding the tensor keeps its identity from being reused
        _last = (cu_seq_lens, _Groups(cu_seq_lens, device))
    return _last[1]


# Up to this many tokens per example, attention runs as two matmuls and a softmax instead of SDPA's
# fused CPU kernel, whose per-call overhead dominates on short examples (per-layer timings in the
# performance notes). The matmul form keeps each example's [heads, length, length] probabilities for the
# backward pass (`saved_bytes_per_token`), which grow with length; the fused kernel keeps none, so
# longer examples use it.
MATMUL_ATTENTION_MAX = 512


def saved_bytes_per_token(config, length: int, element_size: int) -> int:
    """Attention probabilities the matmul form keeps per token, over all layers, for examples of `length`."""
    if length > MATMUL_ATTENTION_MAX:
        return 0
    text = config.get_text_config()
    return text.num_hidden_layers * text.num_attention_heads * length * element_size


def causal_attention(q, k, v, scale=None, dropout: float = 0.0):
    """Causal attention over [batch, heads, length, dim]; see MATMUL_ATTENTION_MAX for which form runs."""
    import torch

    length = q.shape[-2]
    if q.device.type != "cpu" or length > MATMUL_ATTENTION_MAX:
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=True, scale=scale
        )
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)
    # In the inputs' dtype: PyTorch's CPU softmax accumulates bf16 in fp32, and the probabilities kept
    # for the backward pass take half the memory of fp32 ones.
    probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    if dropout:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    return torch.matmul(probs, v)


def segment_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, cu_seq_lens_q=None, **kwargs
):
    """transformers attention function: query [1, heads, T, dim], key/value [1, kv_heads, T, dim] ->
    ([1, T, heads, dim], None), causal within each example of `cu_seq_lens_q`."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    simple = (
        cu_seq_lens_q is not None
        and query.shape[0] == 1
        and query.shape[2] == key.shape[2] == int(cu_seq_lens_q[-1])
        and getattr(module, "is_causal", True)
        and kwargs.get("sliding_window") is None
        and kwargs.get("softcap") is None
    )
    if not simple:
        CALLS["fallback"] += 1
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    CALLS["segments"] += 1
    with torch.profiler.record_function("sftlib::attention"):  # for sftlib.bench.profiling; no cost otherwise
        return _segment_attention(module, query, key, value, cu_seq_lens_q, dropout, scaling)


def _segment_attention(module, query, key, value, cu_seq_lens_q, dropout, scaling):
    import torch

    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    grouped = _groups(cu_seq_lens_q, query.device)
    heads, dim = query.shape[1], query.shape[3]
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, heads, dim]
    outputs = []
    for index, examples, longest in grouped.groups:
        qg, kg, vg = (
            x.index_select(0, index).view(examples, longest, heads, dim).transpose(1, 2) for x in (q, k, v)
        )
        out = causal_attention(qg, kg, vg, scaling, dropout)  # [examples, heads, longest, dim]
        outputs.append(out.transpose(1, 2).reshape(examples * longest, heads, dim))
    merged = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
    return merged.index_select(0, grouped.source).unsqueeze(0), None


def register() -> str:
    """Register NAME (attention and its mask function) with transformers; returns the name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, segment_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME

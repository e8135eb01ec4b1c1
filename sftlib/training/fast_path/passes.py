"""A step as passes: the step's examples, packed into one padding-free row, split into passes of whole examples.

TRL's padding-free collator (`SFTConfig(padding_free=True)`) lays a step's examples out as one row
[1, T], position_ids restarting at 0 for every example and the sequence boundaries in
`cu_seq_lens_q`. `split_passes` cuts that row into passes of at most `pass_tokens` tokens, each
example whole and in one pass, so the trainer can run forward and backward per pass with the
activation memory of one pass. With several processes a step is split into micro-batches of whole
examples instead (`examples_per_micro_batch`).
"""

from __future__ import annotations

from typing import Any


def pack_rows(lengths: list[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing: indices of `lengths` grouped into bins whose lengths sum to <= max_length.

    Longer items first, each into the fullest bin it still fits (ties: the earliest bin). An item
    longer than max_length gets a bin of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        best = None
        for r, space in enumerate(free):
            if n <= space and (best is None or space < free[best]):
                best = r
        if best is None:
            rows.append([i])
            free.append(max_length - n)
        else:
            rows[best].append(i)
            free[best] -= n
    return rows


def example_spans(inputs: dict[str, Any]) -> list[tuple[int, int]]:
    """(start, end) of every example in a padding-free row [1, T], from TRL's `cu_seq_lens_q`."""
    bounds = inputs["cu_seq_lens_q"].tolist()
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def split_passes(inputs: dict[str, Any], pass_tokens: int) -> list[dict[str, Any]]:
    """A padding-free step [1, T] -> padding-free passes of whole examples of <= pass_tokens tokens each.

    Every pass carries what TRL's collator gives a row (input_ids, labels, position_ids, the sequence
    boundaries for varlen attention kernels); other keys are passed on unchanged.
    """
    import torch

    spans = example_spans(inputs)
    bins = pack_rows([end - start for start, end in spans], pass_tokens)
    per_token = ("input_ids", "labels", "position_ids")
    boundaries = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")
    passes = []
    for members in bins:
        members = sorted(members)  # dataset order within a pass
        index = torch.cat([torch.arange(*spans[i]) for i in members]).to(inputs["input_ids"].device)
        lengths = torch.tensor([spans[i][1] - spans[i][0] for i in members])
        one = {k: v for k, v in inputs.items() if k not in per_token + boundaries}
        one.update({k: inputs[k][:, index] for k in per_token})
        cu = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
        cu = cu.to(inputs["cu_seq_lens_q"].device)
        one["cu_seq_lens_q"] = one["cu_seq_lens_k"] = cu
        one["max_length_q"] = one["max_length_k"] = int(lengths.max())
        if "seq_idx" in inputs:
            one["seq_idx"] = torch.repeat_interleave(torch.arange(len(members), dtype=torch.int32), lengths)[
                None
            ].to(inputs["seq_idx"].device)
        passes.append(one)
    return passes


def examples_per_micro_batch(examples_per_step: int, longest: int, pass_tokens: int) -> int:
    """The most examples per micro-batch that divide the step and whose worst case fits one pass (>= 1)."""
    budget = max(pass_tokens, longest)
    return max(
        k for k in range(1, examples_per_step + 1) if examples_per_step % k == 0 and k * longest <= budget
    )

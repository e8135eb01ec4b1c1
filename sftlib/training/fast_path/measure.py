"""What the training plan reads about the machine, the model and the data. Nothing here changes them.

The CPU under a user's run may not be the one sftlib was developed on: bf16 is several times faster
than fp32 where the CPU has avx512_bf16/AMX and several times slower where it is emulated. So the
precision is timed where the run starts, on the model's own linear-layer shapes (forward and
input-gradient matmuls at the pass size), not on a whole pass, which in the other precision would need
a second copy of the weights. Activation memory is measured per token on two short forward passes;
it bounds the pass size and decides activation checkpointing (`sftlib.training.fast_path.plan`).
"""

from __future__ import annotations

MEASURE_TOKENS = 64  # length of the forward pass that measures activation memory
SETTLED = 2.0  # one precision this many times slower than the other on the shapes timed so far: it loses


def time_precisions(model, tokens: int, device: str, weight_grads: bool) -> dict[str, float]:
    """{"bf16": s, "fp32": s}: seconds the model's linear layers take for a pass of `tokens` tokens.

    Shapes are timed smallest first, both precisions each, and timing stops once one precision takes
    SETTLED times the other's on the shapes so far: where bf16 is emulated (a CPU without AVX512-BF16 or
    AMX) it is tens of times slower, and timing it on the LM head alone would cost minutes. The seconds
    are then over the shapes timed, enough to compare."""
    from sftlib.training.fast_path.timing import linear_shapes, model_matmul_seconds

    totals = {"bf16": 0.0, "fp32": 0.0}
    for (k, n), count in sorted(linear_shapes(model).items(), key=lambda item: item[0][0] * item[0][1]):
        for name, dtype in (("bf16", "bfloat16"), ("fp32", "float32")):
            totals[name] += model_matmul_seconds({(k, n): count}, tokens, dtype, device, weight_grads)
        if max(totals.values()) > SETTLED * min(totals.values()):
            break
    return {name: round(seconds, 5) for name, seconds in totals.items()}


def on_rank_zero(world_size: int, measure):
    """`measure()` on rank 0, the same result on every rank (ranks must make the same choice)."""
    if world_size == 1:
        return measure()
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    result = [measure() if PartialState().is_main_process else None]
    broadcast_object_list(result, from_process=0)
    return result[0]


def weights_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def longest_example(dataset, default: int) -> int:
    """Tokens in the longest prepared example (`default` where the dataset does not say)."""
    if dataset is not None and "num_tokens" in dataset.column_names and len(dataset):
        return int(max(dataset["num_tokens"]))
    return default


def flash_attention_installed() -> bool:
    """Whether the flash-attn package (transformers' `flash_attention_2`) can be imported."""
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def activation_bytes_per_token(model, autocast_dtype=None, tokens: int = MEASURE_TOKENS) -> float | None:
    """Bytes of activations autograd keeps for the backward pass, per token, from two short forward passes.

    Gradients flow into the input embeddings, so a frozen base model keeps what LoRA's backward needs;
    the run's autocast applies; weights are not counted and shared storage counts once. The passes
    are `tokens` and 2 x `tokens` long and the difference is taken, so per-pass costs (autocast's
    low-precision weight copies, rotary tables) don't count as per-token ones. The RNG state is
    restored, so the run's dropout masks are unchanged. None for a model without a plain backbone.
    """
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if backbone is None or model.get_input_embeddings() is None:
        return None
    short, long = (saved_bytes(model, backbone, n, autocast_dtype) for n in (tokens, 2 * tokens))
    return max(0, long - short) / tokens


def saved_bytes(model, backbone, tokens: int, autocast_dtype) -> int:
    """Bytes autograd keeps for the backward pass of one forward of `backbone` over `tokens` tokens."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    device = model.get_input_embeddings().weight.device
    ids = torch.zeros((1, tokens), dtype=torch.long, device=device)
    positions = torch.arange(tokens, device=device).unsqueeze(0)
    was_training = model.training
    model.train()
    try:
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            torch.enable_grad(),
            torch.autocast(
                device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
            ),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
            backbone(inputs_embeds=embeds, position_ids=positions, use_cache=False)
    finally:
        model.train(was_training)
    return sum(saved.values())


def free_memory_bytes(device, pending_bytes: int = 0) -> int:
    """Memory free for activations on `device`, less `pending_bytes` still to be placed there."""
    import torch

    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    return max(0, free - pending_bytes)

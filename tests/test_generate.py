"""Generation on the tiny random Llama (real SmolLM2 tokenizer) and scoring on known answers."""

from pathlib import Path

import pytest
import torch

from sftlib.config import DatasetConfig, ModelConfig, RunConfig
from sftlib.errors import SftlibError
from sftlib.inference.generate import Generation, generate, generations
from sftlib.inference.loading import load_for_generation
from sftlib.inference.prompts import prompts_for
from sftlib.inference.scoring import score, token_f1
from sftlib.models import embedded
from sftlib.models.modeling import stop_ids

TINY = "embedded:tiny-random-llama"
PROMPTS = [
    [{"role": "user", "content": "Write this date as YYYY-MM-DD: March 5th, 2021"}],
    [{"role": "user", "content": "Hi"}],
    [
        {
            "role": "user",
            "content": "A much longer question, so that this prompt needs no padding at all in its batch.",
        }
    ],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "5 Mar 2021?"}],
]


@pytest.fixture(scope="module")
def tiny():
    return load_for_generation(ModelConfig(path=TINY, dtype="float32"))


def _force_token(model, token_id):
    """Make `token_id` the greedy choice at every step; return a list that counts forward passes."""
    calls = []

    def hook(module, args, output):
        calls.append(1)
        output = output.clone()
        output[..., token_id] += 1e4
        return output

    model.get_output_embeddings().register_forward_hook(hook)
    return calls


def test_load_for_generation_gives_an_eval_model_with_a_pad_token(tiny):
    model, tokenizer = tiny
    assert tokenizer.pad_token is not None
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32


def test_generate_returns_one_string_per_prompt(tiny):
    out = generate(*tiny, PROMPTS, max_new_tokens=4, batch_size=2, progress=False)
    assert len(out) == len(PROMPTS) and all(isinstance(s, str) for s in out)


def test_batched_left_padded_generation_equals_one_by_one(tiny):
    model, tokenizer = tiny
    tokenizer.padding_side = "right"  # as a training run leaves it: generate pads left regardless
    batched = generate(*tiny, PROMPTS, max_new_tokens=6, batch_size=4, progress=False)
    assert tokenizer.padding_side == "right"
    tokenizer.padding_side = "left"
    single = [generate(*tiny, [p], max_new_tokens=6, batch_size=1, progress=False)[0] for p in PROMPTS]
    assert batched == single


def test_generate_returns_only_new_text_up_to_max_new_tokens():
    model, tokenizer = load_for_generation(ModelConfig(path=TINY))
    token_a = tokenizer.convert_tokens_to_ids("A")
    _force_token(model, token_a)
    assert generate(model, tokenizer, PROMPTS[:2], max_new_tokens=3, progress=False) == ["AAA", "AAA"]
    assert generate(model, tokenizer, ["plain text prompt"], max_new_tokens=2, progress=False) == ["AA"]


def test_generate_stops_at_the_end_of_turn_token():
    model, tokenizer = load_for_generation(ModelConfig(path=TINY))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_ids(tokenizer, model.generation_config)
    calls = _force_token(model, im_end)
    out = generate(model, tokenizer, PROMPTS[:2], max_new_tokens=8, progress=False)
    assert out == ["", ""]  # the special token is stripped from the answer
    assert len(calls) == 1  # one decoding step, not eight
    kept = generations(model, tokenizer, PROMPTS[:1], max_new_tokens=8, progress=False)
    assert kept == [Generation(text="", raw="<|im_end|>", cut_off=False)]  # the parsers' view keeps it


def test_a_generation_that_hits_max_new_tokens_says_it_was_cut_off():
    model, tokenizer = load_for_generation(ModelConfig(path=TINY))
    _force_token(model, tokenizer.convert_tokens_to_ids("A"))
    assert (
        generations(model, tokenizer, PROMPTS[:2], max_new_tokens=3, progress=False)
        == [Generation(text="AAA", raw="AAA", cut_off=True)] * 2
    )


def test_adapter_is_merged_into_the_base_with_the_same_outputs(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir = embedded.resolve(TINY)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(base, config).eval()
    peft_model.save_pretrained(tmp_path)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        expected = peft_model(ids).logits
    merged, _ = load_for_generation(ModelConfig(path=base_dir, dtype="float32"), adapter_dir=str(tmp_path))
    assert not hasattr(merged, "peft_config")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_load_for_generation_refuses_what_is_not_a_model_or_adapter(tmp_path):
    with pytest.raises(SftlibError, match="no config.json"):
        load_for_generation(ModelConfig(path=str(tmp_path)))
    with pytest.raises(SftlibError, match="holds no LoRA adapter"):
        load_for_generation(ModelConfig(path=TINY), adapter_dir=tmp_path)


def test_load_for_generation_applies_the_configured_chat_template():
    _, tokenizer = load_for_generation(ModelConfig(path=TINY, chat_template="llama3"))
    assert "<|start_header_id|>" in tokenizer.apply_chat_template(PROMPTS[1], tokenize=False)


def test_prompts_come_from_the_user_the_held_out_split_or_training_labelled_as_seen():
    def cfg(**dataset):
        return RunConfig(ModelConfig(path=TINY), DatasetConfig(name="configs/data/iso_dates", **dataset))

    held_out = prompts_for(cfg(eval_split="test"), limit=2)
    assert (
        held_out.origin == "held-out"
        and held_out.scored()
        and all(r is not None for r in held_out.references)
    )
    seen = prompts_for(cfg(), limit=50)
    assert (
        seen.origin == "seen in training"
        and not seen.scored()
        and seen.references == [None] * len(seen.prompts)
    )
    assert 0 < len(seen.prompts) <= 4
    own = prompts_for(cfg(), own=["Write 5 March 2021 as YYYY-MM-DD."])
    assert own.origin == "yours" and own.prompts == [
        [{"role": "user", "content": "Write 5 March 2021 as YYYY-MM-DD."}]
    ]


def test_generate_refuses_mixed_prompt_kinds(tiny):
    with pytest.raises(SftlibError, match="all strings or all chat"):
        generate(*tiny, ["text", [{"role": "user", "content": "hi"}]], progress=False)
    assert generate(*tiny, [], progress=False) == []


def test_score_exact_match_strips_whitespace():
    result = score([" 2021-03-05\n", "2021-03-06", "The date is 2021-03-05."], ["2021-03-05"] * 3)
    assert result["n"] == 3
    assert result["exact_match"] == pytest.approx(100 / 3)


def test_token_f1_gives_partial_credit_on_a_near_miss():
    assert token_f1("2021-03-05", "2021-03-05") == 1.0
    assert token_f1("2021-03-06", "2021-03-05") == pytest.approx(2 / 3)
    assert token_f1("The date is 2021-03-05.", "2021-03-05") == pytest.approx(2 * 0.6 * 1 / 1.6)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert score(["a", "b"], ["a", "c"])["token_f1"] == pytest.approx(50.0)


def test_score_refuses_mismatched_lengths():
    with pytest.raises(SftlibError, match="2 predictions for 1 references"):
        score(["a", "b"], ["a"])
    assert score([], []) == {"exact_match": 0.0, "token_f1": 0.0, "n": 0}


def test_cpu_has_fast_bf16_matches_the_cpu_flags():
    from sftlib.bench.machine import cpu_has_fast_bf16

    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    if not flags:
        pytest.skip("no /proc/cpuinfo to compare with")
    assert cpu_has_fast_bf16() == ("avx512_bf16" in flags or "amx_tile" in flags)


def test_scores_compare_answers_after_a_reasoning_block():
    assert score(["<think>\nday 5, month 3\n</think>\n\n2021-03-05"], ["2021-03-05"])["exact_match"] == 100.0
    assert score(["<think>\n2021-03-05\n</think>\n\nno idea"], ["2021-03-05"])["exact_match"] == 0.0
    assert token_f1("<think>x</think>2021-03-05", "<think>y</think> 2021-03-05") == 1.0


WEEKDAY = {
    "type": "function",
    "function": {
        "name": "weekday",
        "description": "Day of the week of a date",
        "parameters": {"type": "object", "properties": {"date": {"type": "string"}}, "required": ["date"]},
    },
}


def _tool_row(i: int, final: bool = True, **extra) -> dict:
    """A tool-calling conversation: a call (arguments as a JSON string), its result, then an answer."""
    date = f"2021-03-{i + 1:02d}"
    messages = [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": f"What day of the week was {date}?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": f"c{i}",
                    "type": "function",
                    "function": {"name": "weekday", "arguments": f'{{"date": "{date}"}}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": f"c{i}", "content": '{"weekday": "Friday"}'},
        {"role": "assistant", "content": f"{date} was a Friday."},
    ]
    return {"tools": [WEEKDAY], "messages": messages if final else messages[:3], **extra}


def test_held_out_prompts_are_the_prompts_masking_trained_after_with_tools_and_template_kwargs(tmp_path):
    import json

    from sftlib.data import dataset
    from sftlib.inference.generate import _prompt_texts
    from sftlib.models import modeling

    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    test_rows = [
        _tool_row(0),
        _tool_row(1, chat_template_kwargs={"enable_thinking": True}),  # the row's own kwargs win
        _tool_row(2, final=False),  # ends with a tool call: no text answer to score, not asked
        chat,
    ]
    (tmp_path / "data").mkdir()
    train_rows = [_tool_row(3, chat_template_kwargs={"enable_thinking": True}), chat]  # the same columns
    for split, rows in (("train", train_rows), ("test", test_rows)):
        with open(tmp_path / "data" / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    cfg = RunConfig(
        ModelConfig(path=TINY, chat_template="qwen3"),
        DatasetConfig(
            name=str(tmp_path / "data"), eval_split="test", chat_template_kwargs={"enable_thinking": False}
        ),
    )
    asked = prompts_for(cfg, limit=10)
    assert asked.origin == "held-out"
    assert asked.references == ["2021-03-01 was a Friday.", "2021-03-02 was a Friday.", "Hello."]
    assert asked.prompts[0][-1] == {"role": "tool", "tool_call_id": "c0", "content": '{"weekday": "Friday"}'}
    assert asked.prompts[0][2]["tool_calls"][0]["function"]["arguments"] == {"date": "2021-03-01"}
    assert [c["tools"] for c in asked.contexts] == [[WEEKDAY], [WEEKDAY], None]
    assert [c["enable_thinking"] for c in asked.contexts] == [False, True, False]

    tokenizer = modeling.load_tokenizer(cfg.model)
    texts, add_special_tokens = _prompt_texts(tokenizer, asked.prompts, asked.contexts)
    assert not add_special_tokens
    assert '"name": "weekday"' in texts[0] and '{"weekday": "Friday"}' in texts[0]  # schema, tool result
    assert texts[0].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # enable_thinking: false
    assert texts[1].endswith("<|im_start|>assistant\n")  # the row's enable_thinking: true
    # Masking trained a turn right after each of these prompts, tokenized alone.
    trained = dataset.prepare(cfg, tokenizer, splits=("eval",)).eval
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert any(
            row["input_ids"][: len(ids)] == ids
            and row["labels"][len(ids) - 1] == -100
            and row["labels"][len(ids)] == row["input_ids"][len(ids)]
            for row in trained
        ), text
    plain = generate(*load_for_generation(cfg.model), asked.prompts[2:], max_new_tokens=1, progress=False)
    assert len(plain) == 1


def test_generate_renders_each_prompt_with_its_context(tiny):
    model, tokenizer = tiny
    from sftlib.data import rendering
    from sftlib.inference.generate import _prompt_texts

    contexts = [rendering.template_context({"tools": [WEEKDAY]}), None]
    texts, _ = _prompt_texts(tokenizer, PROMPTS[:2], contexts)
    assert texts[0] == tokenizer.apply_chat_template(
        PROMPTS[0], tools=[WEEKDAY], add_generation_prompt=True, tokenize=False
    )
    assert texts[1] == tokenizer.apply_chat_template(PROMPTS[1], add_generation_prompt=True, tokenize=False)
    with pytest.raises(SftlibError, match="1 template contexts for 2 prompts"):
        generate(model, tokenizer, PROMPTS[:2], contexts=contexts[:1], progress=False)


def test_own_prompts_and_the_cli_use_the_kwargs_the_run_was_trained_with(tmp_path):
    from sftlib.inference.prompts import trained_template_kwargs
    from sftlib.outputs.saving import write_resolved

    cfg = RunConfig(
        ModelConfig(path=TINY),
        DatasetConfig(name="configs/data/iso_dates", chat_template_kwargs={"enable_thinking": False}),
    )
    own = prompts_for(cfg, own=["Hi"])
    assert own.contexts == [{"tools": None, "enable_thinking": False}]
    write_resolved(cfg, tmp_path)
    assert trained_template_kwargs(str(tmp_path)) == {"enable_thinking": False}
    adapter = tmp_path / "lora_weights"
    assert trained_template_kwargs(TINY, str(adapter), '{"x": 1}') == {"enable_thinking": False, "x": 1}
    assert trained_template_kwargs(TINY, None, '{"enable_thinking": true}') == {"enable_thinking": True}
    assert trained_template_kwargs(TINY) == {}
    with pytest.raises(SftlibError, match="must be a JSON object"):
        trained_template_kwargs(TINY, None, "enable_thinking=false")

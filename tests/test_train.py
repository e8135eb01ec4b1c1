"""Training end to end on the tiny model: output_dir's files, artifacts that reload, merge equivalence."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sftlib.config import load_config
from sftlib.errors import SftlibError
from sftlib.outputs import merge
from sftlib.training.train import train
from tests.conftest import write_chat_rows

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(tmp_path: Path, *overrides: str):
    data = write_chat_rows(tmp_path / "chat.jsonl")
    base = [
        f"dataset.name={data}",
        "dataset.eval_split=null",
        "dataset.max_samples=null",
        f"training.output_dir={tmp_path / 'out'}",
    ]
    return load_config(ROOT / "configs/tiny.yaml", base + list(overrides))


def test_lora_run_writes_adapter_merged_model_and_tokenizer_and_every_artifact_reloads(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_cfg(tmp_path, "training.max_steps=2")
    info = train(cfg)
    out = cfg.output_dir
    assert (out / "lora_weights" / "adapter_model.safetensors").is_file()
    assert (out / "lora_weights" / "adapter_config.json").is_file()
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "resolved_config.yaml").is_file()
    # safetensors only: no pickled weights or arguments among the final artifacts
    assert not [
        p for p in out.glob("**/*") if p.suffix in {".bin", ".pt", ".pth"} and "checkpoint-" not in str(p)
    ]

    on_disk = json.loads((out / "run_info.json").read_text())
    for key in ("world_size", "global_step", "train_runtime_s", "final_loss", "versions", "distributed_type"):
        assert key in on_disk
    assert on_disk["world_size"] == 1 and on_disk["global_step"] == 2 == info["global_step"]
    assert on_disk["versions"]["trl"] and on_disk["versions"]["torch"]

    tokenizer = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(_base_dir(cfg))
    peft_model = PeftModel.from_pretrained(base, out / "lora_weights")
    ids = tokenizer(["October 3, 2021"], return_tensors="pt")["input_ids"]
    assert (merge.logits(merged, ids) - merge.logits(peft_model, ids)).abs().max() < 1e-4
    check = on_disk["merge"]  # the merge at the end of training was checked, and recorded
    assert check["max_logit_difference"] <= check["tolerance"] and check["dtype"] == "float32"


def _base_dir(cfg):
    from sftlib.models import modeling

    return modeling.resolve_path(cfg.model)


def test_merged_logits_equal_base_plus_adapter_and_differ_from_base(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = tiny_cfg(tmp_path, "training.max_steps=3", "training.learning_rate=0.01")
    train(cfg)
    adapted = merge.load_base_with_adapter(cfg.model, cfg.output_dir / "lora_weights")
    merged = AutoModelForCausalLM.from_pretrained(cfg.output_dir)
    base = AutoModelForCausalLM.from_pretrained(_base_dir(cfg))
    from transformers import AutoTokenizer

    ids = merge.sample_inputs(AutoTokenizer.from_pretrained(cfg.output_dir))
    assert (merge.logits(merged, ids) - merge.logits(adapted, ids)).abs().max() < 1e-4
    assert (merge.logits(merged, ids) - merge.logits(base, ids)).abs().max() > 1e-3  # the adapter changed it


@pytest.mark.parametrize(
    ("settings", "adapter_keys"),
    [
        (["model.lora_config.use_dora=true"], {"use_dora": True}),
        (
            ["model.lora_config.use_rslora=true", "model.lora_config.target_modules=all-linear"],
            {"use_rslora": True},
        ),
    ],
    ids=["dora", "rslora-all-linear"],
)
def test_peft_lora_settings_train_merge_and_pass_the_merge_check(tmp_path, settings, adapter_keys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_cfg(tmp_path, "training.max_steps=3", "training.learning_rate=0.01", *settings)
    info = train(cfg)
    saved = json.loads((cfg.output_dir / "lora_weights" / "adapter_config.json").read_text())
    assert {k: saved[k] for k in adapter_keys} == adapter_keys  # PEFT built the adapter as configured
    if "all-linear" in " ".join(settings):  # every linear layer but the LM head carries an adapter
        kinds = {name.rsplit(".", 1)[-1] for name in saved["target_modules"]}
        assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    check = info["merge"]
    assert check["max_logit_difference"] <= check["tolerance"] and check["resolves_adapter"]
    adapted = merge.load_base_with_adapter(cfg.model, cfg.output_dir / "lora_weights")
    merged = AutoModelForCausalLM.from_pretrained(cfg.output_dir)
    ids = merge.sample_inputs(AutoTokenizer.from_pretrained(cfg.output_dir))
    assert (merge.logits(merged, ids) - merge.logits(adapted, ids)).abs().max() < 1e-4


def test_full_fine_tune_writes_model_and_tokenizer_and_no_adapter(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_cfg(tmp_path, "model.use_lora=false", "training.max_steps=2")
    train(cfg)
    out = cfg.output_dir
    assert not (out / "lora_weights").exists()
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|im_end|>"
    trained = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(_base_dir(cfg))
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert changed  # every-weight training changed weights


def test_loss_falls_on_a_tiny_overfit_set(tmp_path):
    cfg = tiny_cfg(
        tmp_path,
        "model.use_lora=false",
        "training.max_steps=40",
        "training.learning_rate=0.003",
        "training.per_device_train_batch_size=8",
    )
    history = [h["loss"] for h in train(cfg)["log_history"] if "loss" in h]
    assert len(history) == 40
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5


def test_training_into_a_finished_run_is_refused_and_touches_nothing(tmp_path):
    cfg = tiny_cfg(tmp_path, "training.max_steps=1")
    train(cfg)
    before = {p: p.stat().st_mtime_ns for p in cfg.output_dir.glob("**/*")}
    with pytest.raises(SftlibError, match="already holds a finished run"):
        train(cfg)
    assert {p: p.stat().st_mtime_ns for p in cfg.output_dir.glob("**/*")} == before


@pytest.mark.slow
def test_cli_lora_run_on_the_real_smollm2_writes_adapter_merged_model_and_tokenizer(tmp_path):
    out = tmp_path / "lora"
    cmd = [
        sys.executable, "-m", "sftlib", "train", "--config", "configs/lora_train_config.yaml",
        "--set", "training.max_steps=3", "--set", f"training.output_dir={out}", "--set", "dataset.max_samples=64",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "lora_weights" / "adapter_model.safetensors").is_file()
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    info = json.loads((out / "run_info.json").read_text())
    assert info["global_step"] == 3 and info["model_path"] == "embedded:SmolLM2-135M-Instruct"


def test_the_configured_chat_template_is_saved_with_the_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from sftlib.models.modeling import chat_template_text

    cfg = tiny_cfg(tmp_path, "model.chat_template=qwen2_5", "training.max_steps=1")
    train(cfg)
    saved = AutoTokenizer.from_pretrained(cfg.output_dir)  # what merge, generate and notebook 05 load
    assert (
        saved.chat_template
        == chat_template_text("qwen2_5")
        != AutoTokenizer.from_pretrained(_base_dir(cfg)).chat_template
    )


def test_merge_false_leaves_the_adapter_and_sftlib_merge_merges_it_later(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlib import cli

    data = write_chat_rows(tmp_path / "chat.jsonl")
    overrides = [
        f"dataset.name={data}",
        "dataset.eval_split=null",
        "dataset.max_samples=null",
        f"training.output_dir={tmp_path / 'out'}",
        "training.max_steps=2",
        "training.learning_rate=0.01",
    ]
    cfg = load_config(ROOT / "configs/tiny.yaml", [*overrides, "training.merge=false"])
    info = train(cfg)
    out = cfg.output_dir
    assert info["merge"] is None and json.loads((out / "run_info.json").read_text())["merge"] is None
    assert (out / "lora_weights" / "adapter_model.safetensors").is_file() and (
        out / "tokenizer.json"
    ).is_file()
    assert not (out / "model.safetensors").exists()  # nothing merged

    args = ["merge", "--config", str(ROOT / "configs/tiny.yaml")] + [
        x for o in overrides for x in ("--set", o)
    ]
    assert cli.main(args) == 0
    check = json.loads((out / "run_info.json").read_text())["merge"]  # recorded where the run's figures are
    assert check["max_logit_difference"] <= check["tolerance"] and check["resolves_adapter"]
    adapted = merge.load_base_with_adapter(cfg.model, out / "lora_weights")
    merged = AutoModelForCausalLM.from_pretrained(out)
    ids = merge.sample_inputs(AutoTokenizer.from_pretrained(out))
    assert (merge.logits(merged, ids) - merge.logits(adapted, ids)).abs().max() < 1e-4


def test_an_unexpected_error_is_one_line_and_its_traceback_is_kept_in_output_dir(
    tmp_path, capsys, monkeypatch
):
    from sftlib import cli
    from sftlib.training import trainer

    def shape_error(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x64 and 32x64)")

    monkeypatch.setattr(trainer, "build_trainer", shape_error)
    data = write_chat_rows(tmp_path / "chat.jsonl")
    out = tmp_path / "out"
    args = ["train", "--config", str(ROOT / "configs/tiny.yaml"), "--set", f"dataset.name={data}"]
    args += ["--set", "dataset.eval_split=null", "--set", f"training.output_dir={out}"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "error: RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x64 and 32x64) "
        f"(traceback in {out / 'error.log'})"
    )
    assert not any("Traceback" in line for line in err)
    trace = (out / "error.log").read_text()
    assert trace.startswith("Traceback") and "shape_error" in trace and "in train" in trace

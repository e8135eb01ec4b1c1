"""Notebook 03's preview: the trainer sftlib builds for a config, described before anything trains.

`preview` runs `build` in a child process, as the notebook does: the SFTConfig and LoraConfig fields that
differ from TRL's and PEFT's defaults, the first batch decoded with its trained tokens, the plan; and
nothing is written into output_dir.
"""

from pathlib import Path

import pytest

from sftlib.errors import SftlibError
from sftlib.training import preview

ROOT = Path(__file__).resolve().parents[1]


def test_the_preview_shows_the_settings_that_differ_and_a_first_batch_with_trained_tokens(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    given = preview.preview("configs/tiny.yaml", [f"training.output_dir={out}"])
    sft = given["sft_config"]
    assert sft["max_steps"] == "4" and sft["per_device_train_batch_size"] == "4"
    assert sft["output_dir"] == repr(str(out)) and not out.exists()  # nothing lands in output_dir
    assert (
        given["lora_config"]["lora_alpha"] == "16"
        and given["lora_config"]["target_modules"].count("_proj") == 2
    )
    tokens = given["batch_tokens"]
    assert given["batch_shape"][1] == len(tokens)
    trained = "".join(text for text, is_trained, _, _ in tokens if is_trained)
    assert "<|im_end|>" in trained and trained.count("-") >= 2  # an ISO date and its end of turn
    assert any(not is_trained for _, is_trained, _, _ in tokens)  # the prompt is not trained


def test_a_preview_that_fails_is_one_line_naming_the_error(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SftlibError) as err:
        preview.preview("configs/tiny.yaml", ["training.max_steps=-7", "model.path=/no/such/model"])
    assert "\n" not in str(err.value) and len(str(err.value)) < 600


@pytest.mark.parametrize(
    "config", ["configs/demo.yaml", "configs/chat_lesson.yaml", "configs/tool_lesson.yaml"]
)
def test_the_lessons_configs_preview_as_notebook_03_shows_them(config, tmp_path, monkeypatch):
    """Each lesson's config as shipped (eval steps included: the trainer needs the eval split then)."""
    monkeypatch.chdir(ROOT)
    given = preview.preview(config, [f"training.output_dir={tmp_path / 'run'}"])
    assert given["batch_shape"][1] == len(given["batch_tokens"]) and given["sft_config"]["max_steps"]

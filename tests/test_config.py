"""Config loading: the seed's schema, loud errors, overrides, the resolved file."""

from pathlib import Path

import pytest
import yaml

from sftlib.config import LORA_DEFAULTS, load_config
from sftlib.errors import SftlibError
from sftlib.outputs.saving import write_resolved

BASE = {
    "model": {"path": "embedded:tiny-random-llama", "max_seq_length": 64},
    "dataset": {"name": "configs/data/iso_dates"},
    "training": {"output_dir": "runs/x", "learning_rate": 1e-4},
}


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def with_change(dotted: str, value):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return data


def test_seed_defaults_fill_lora_settings(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.model.lora_config == {
        "r": 16,
        "lora_alpha": 32,
        "target_modules": ["q_proj", "v_proj"],
        "lora_dropout": 0.1,
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }
    assert cfg.model.trust_remote_code is False
    assert cfg.model.dtype is None and cfg.model.load_in_4bit is False and cfg.model.use_lora is False


@pytest.mark.parametrize("name", ["default_train_config", "lora_train_config", "qlora_train_config", "tiny"])
def test_shipped_configs_load(name):
    cfg = load_config(f"configs/{name}.yaml")
    assert cfg.training["output_dir"]


def test_shipped_full_and_lora_configs_carry_the_seed_batch_settings():
    for name in ("default_train_config", "lora_train_config"):
        t = load_config(f"configs/{name}.yaml").training
        assert (t["per_device_train_batch_size"], t["gradient_accumulation_steps"]) == (2, 8)


def test_set_overrides_any_value_with_yaml_typing(tmp_path):
    cfg = load_config(
        write(tmp_path, BASE),
        ["training.max_steps=3", "model.lora_config.target_modules=[q_proj, k_proj]", "model.use_lora=true"],
    )
    assert cfg.training["max_steps"] == 3
    assert cfg.model.lora_config["target_modules"] == ["q_proj", "k_proj"]
    assert cfg.model.use_lora is True


def test_lora_config_takes_any_peft_field_over_sftlibs_defaults(tmp_path):
    settings = {
        "use_dora": True,
        "use_rslora": True,
        "modules_to_save": ["lm_head"],
        "target_modules": "all-linear",
        "init_lora_weights": "gaussian",
        "layers_to_transform": [0, 1],
    }
    cfg = load_config(write(tmp_path, with_change("model.lora_config", settings)))
    assert cfg.model.lora_config == {**LORA_DEFAULTS, **settings}
    again = load_config(write_resolved(cfg, tmp_path / "out"))
    assert again.model.lora_config == cfg.model.lora_config


@pytest.mark.parametrize(
    ("key", "value", "said", "hint"),
    [
        ("use_dorra", True, "unknown config key `model.lora_config.use_dorra`", "`use_dora`"),
        ("use_dora", "yes", "`model.lora_config.use_dora` is 'yes'", "expected bool"),
        ("init_lora_weights", "random", "`model.lora_config.init_lora_weights`", "expected"),
        ("peft_type", "LORA", "`model.lora_config.peft_type` is filled in by PEFT", "remove it"),
    ],
)
def test_a_bad_lora_setting_is_refused_with_peft_s_field_and_the_nearest_key(
    tmp_path, key, value, said, hint
):
    with pytest.raises(SftlibError) as err:
        load_config(write(tmp_path, with_change(f"model.lora_config.{key}", value)))
    assert said in str(err.value) and hint in str(err.value)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["training.max_steps=7"])
    path = write_resolved(cfg, tmp_path / "out")
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()


BAD = [
    ("training.learning_rat", 1e-4, "unknown config key `training.learning_rat`", "learning_rate"),
    ("model.pth", "x", "unknown config key `model.pth`", "path"),
    ("model.lora_config.rank", 8, "model.lora_config.rank", "`r`"),
    ("dataset.nmae", "x", "dataset.nmae", "name"),
    ("extra", {}, "unknown config key `extra`", "valid keys"),
    ("model.max_seq_length", "long", "model.max_seq_length", "expected int"),
    ("model.dtype", "float8", "model.dtype", "expected"),
    ("model.use_lora", "yes", "model.use_lora", "expected bool"),
    ("training.per_device_train_batch_size", 2.5, "training.per_device_train_batch_size", "expected int"),
    ("training.max_length", 128, "training.max_length", "model.max_seq_length"),
    ("dataset.train_on", "everything", "dataset.train_on", "expected"),
    ("model.load_in_4bit", True, "load_in_4bit needs model.use_lora", "use_lora: true"),
    ("dataset.eval_size", 1.5, "eval_size", "(0, 1)"),
    ("model.path", None, "model.path is required", "set `path:`"),
    ("dataset.format", "csv", "dataset.format", "expected"),
]


@pytest.mark.parametrize(("key", "value", "what", "hint"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_refused_with_the_key_and_a_hint(tmp_path, key, value, what, hint):
    with pytest.raises(SftlibError) as err:
        load_config(write(tmp_path, with_change(key, value)))
    assert what in str(err.value)
    assert hint in str(err.value)


def test_missing_section_and_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(SftlibError, match="no `dataset` section"):
        load_config(write(tmp_path, {"model": BASE["model"]}))
    with pytest.raises(SftlibError, match="not valid YAML at line"):
        load_config(write(tmp_path, "model:\n  path: [unclosed\n"))
    with pytest.raises(SftlibError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(SftlibError, match="dotted.key=value"):
        load_config(write(tmp_path, BASE), ["training.max_steps"])


def test_every_sft_config_field_type_is_one_sftlib_checks(caplog):
    """A field whose annotation sftlib can't check would be accepted with only a warning."""
    import logging

    from sftlib.config import run_config, values

    with caplog.at_level(logging.WARNING, logger="sftlib"):
        for tp in run_config.sft_config_fields().values():
            values.matches(object(), tp)
    assert not [r for r in caplog.records if "can't check" in r.getMessage()]

"""RunConfig: the YAML file with `model`, `dataset` and `training` sections, validated loudly.

Every unknown key stops the run with its dotted path and the nearest valid key; every value is
checked against the type of the field it sets. `training` is checked against `trl.SFTConfig`
itself, so its fields are never copied here.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from sftlib.config import values
from sftlib.errors import SftlibError

DEFAULT_CONFIG = "configs/default_train_config.yaml"


# `model.lora_config` takes any field of peft.LoraConfig (use_dora, use_rslora, modules_to_save,
# target_modules: all-linear, init_lora_weights, ...), checked against the dataclass; these are sftlib's
# defaults for the rest (configs/default_train_config.yaml writes them out).
LORA_DEFAULTS = {
    "r": 16,
    "lora_alpha": 32,
    "target_modules": ["q_proj", "v_proj"],
    "lora_dropout": 0.1,
    "bias": "none",
    "task_type": "CAUSAL_LM",
}
# peft.LoraConfig fields that PEFT fills in itself when it builds or saves an adapter.
LORA_SET_BY_PEFT = frozenset(
    ["peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "inference_mode"]
)


@dataclasses.dataclass
class ModelConfig:
    path: str
    max_seq_length: int = 512
    dtype: Literal[None, "auto", "float32", "bfloat16", "float16"] = None
    load_in_4bit: bool = False
    use_lora: bool = False
    lora_config: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(LORA_DEFAULTS))
    trust_remote_code: bool = False
    chat_template: str | None = None  # a .jinja file or a template TRL bundles; None: the tokenizer's own
    # transformers' attention name (sdpa, flash_attention_2, flex_attention, eager, ...) or sftlib's
    # per-example attention ("sftlib_per_example"); None: the training plan picks (sftlib.training.fast_path.plan).
    attn_implementation: str | None = None


@dataclasses.dataclass
class DatasetConfig:
    name: str
    subset: str | None = None
    split: str = "train"
    eval_split: str | None = None
    eval_size: float | int | None = None
    max_samples: int | None = None
    format: Literal["auto", "prompt_completion", "alpaca", "messages", "sharegpt", "text"] = "auto"
    columns: dict[str, str] | None = None
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    # Extra arguments for the chat template, e.g. {enable_thinking: false}; a row's own
    # `chat_template_kwargs` column adds to them. Generation renders prompts with the same.
    chat_template_kwargs: dict[str, Any] | None = None
    max_dropped_fraction: float = 0.1
    # In a mixture, keep this share of the source's train rows (a seeded shuffle); or cap with max_samples.
    fraction: float | None = None


@dataclasses.dataclass
class RunConfig:
    model: ModelConfig
    dataset: DatasetConfig | list[DatasetConfig]  # one source, or a mixture of several
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    config_file: str | None = None  # the YAML file this came from, for messages only

    # Typed access to the `training` settings sftlib reads itself; the rest go to trl.SFTConfig as given.
    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])

    @property
    def seed(self) -> int:
        return self.training.get("seed", sft_config_default("seed"))

    @property
    def sources(self) -> list[DatasetConfig]:
        """The dataset sources: one, or the mixture's in config order."""
        return self.dataset if isinstance(self.dataset, list) else [self.dataset]

    @property
    def dataset_label(self) -> str:
        """The sources' names, for titles and logs."""
        return " + ".join(s.name for s in self.sources)

    @property
    def dataset_num_proc(self) -> int | None:
        return self.training.get("dataset_num_proc", sft_config_default("dataset_num_proc"))

    @property
    def pass_tokens(self) -> int | None:
        """Tokens per forward/backward pass; None: the training plan chooses (sftlib.training.fast_path.plan)."""
        return self.training.get("pass_tokens")

    @property
    def merge(self) -> bool:
        """Whether `sftlib train` merges a LoRA adapter into the base when training ends."""
        return self.training.get("merge", True)

    @property
    def activation_checkpointing(self) -> bool | None:
        """The config's explicit choice (either spelling); None: sftlib decides (sftlib.training.fast_path.plan)."""
        return next((self.training[k] for k in DECIDED_WHEN_NULL if self.training.get(k) is not None), None)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as it would be written back to YAML."""
        out = dataclasses.asdict(self)
        out.pop("config_file")
        return out


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config, apply `dotted.key=value` overrides, and validate everything."""
    path = Path(path or DEFAULT_CONFIG)
    cfg = config_from_dict(raw_config(path, overrides))
    cfg.config_file = str(path)
    cfg.training.setdefault("output_dir", default_output_dir(path))
    return cfg


def raw_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The YAML mapping with overrides applied, not yet validated (reading it imports no ML library)."""
    path = Path(path)
    if not path.is_file():
        raise SftlibError(
            f"config file {path} does not exist.", "pass --config PATH to an existing YAML file."
        )
    try:
        raw = values.parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SftlibError(
            f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}.",
            "correct the YAML there. Configs hold plain values only: tags such as !!python/object are refused.",
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SftlibError(f"{path} must hold a mapping with sections model, dataset, training.")
    for item in overrides:
        values.apply_override(raw, item)
    return raw


def default_output_dir(path: str | Path) -> str:
    return str(Path("runs") / Path(path).stem)


def output_dir_of(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """training.output_dir of a config without validating it: a launcher checks it before it forks
    workers, which must be forked before transformers (and bitsandbytes) is imported."""
    path = Path(path or DEFAULT_CONFIG)
    training = raw_config(path, overrides).get("training") or {}
    value = training.get("output_dir") if isinstance(training, dict) else None
    return Path(value if isinstance(value, str) and value else default_output_dir(path))


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    values.check_keys(raw, ("model", "dataset", "training"), "")
    for section in ("model", "dataset"):
        if section not in raw or raw[section] is None:
            raise SftlibError(
                f"the config has no `{section}` section.", f"add a `{section}:` mapping (see configs/)."
            )
    model_raw = dict(_section(raw, "model"))
    lora_raw = model_raw.pop("lora_config", None) or {}
    if not isinstance(lora_raw, dict):
        raise SftlibError("model.lora_config must be a mapping of LoRA settings (r, lora_alpha, ...).")
    model = ModelConfig(
        lora_config=validate_lora(lora_raw), **_fields(ModelConfig, model_raw, "model", skip={"lora_config"})
    )
    dataset = _dataset(raw["dataset"])
    training = validate_training(_section(raw, "training") if raw.get("training") is not None else {})
    cfg = RunConfig(model=model, dataset=dataset, training=training)
    _check_cross_fields(cfg)
    return cfg


def _dataset(raw) -> DatasetConfig | list[DatasetConfig]:
    """One source (a mapping), or a mixture (a list of mappings, each a full source)."""
    if not isinstance(raw, list):
        return _build(DatasetConfig, _section({"dataset": raw}, "dataset"), "dataset")
    if not raw:
        raise SftlibError("`dataset` is an empty list.", "give one source mapping, or a list of them.")
    sources = []
    for k, item in enumerate(raw):
        if not isinstance(item, dict):
            raise SftlibError(
                f"`dataset[{k}]` must be a mapping (name, split, ...), got {type(item).__name__}."
            )
        sources.append(_build(DatasetConfig, item, f"dataset[{k}]"))
    return sources


def _section(raw: dict, name: str) -> dict:
    value = raw[name]
    if not isinstance(value, dict):
        raise SftlibError(f"`{name}` must be a mapping, got {type(value).__name__}.")
    return value


def _fields(cls, raw: dict, where: str, skip: set[str] = frozenset()) -> dict:
    """`raw` checked against one of this module's dataclasses: no unknown key (a typo of a required
    field is named as one), its required fields there, every value of its field's type."""
    fields = init_fields(cls)
    values.check_keys(raw, fields, where)
    required = (
        f.name for f in dataclasses.fields(cls) if f.default is f.default_factory is dataclasses.MISSING
    )
    for name in required:
        if raw.get(name) in (None, ""):
            raise SftlibError(f"{where}.{name} is required.", f"set `{name}:` under `{where}:`.")
    return _checked(raw, fields, where, skip)


def _checked(raw: dict, fields: dict[str, Any], where: str, skip: set[str] = frozenset()) -> dict:
    """`raw` without `skip`, every key one of `fields` and every value of its field's type."""
    values.check_keys(raw, fields, where)
    for key, value in raw.items():
        if key not in skip:
            values.check_type(value, fields[key], f"{where}.{key}")
    return {key: value for key, value in raw.items() if key not in skip}


def _build(cls, raw: dict, where: str):
    return cls(**_fields(cls, raw, where))


# --------------------------------------------------------------------------- LoRA


def init_fields(cls, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A dataclass's constructor fields and their resolved types, but those in `skip`."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init and f.name not in skip}


@functools.cache
def lora_config_fields() -> dict[str, Any]:
    """peft.LoraConfig's fields, but those PEFT fills in itself (imported lazily, as trl below)."""
    import peft

    return init_fields(peft.LoraConfig, LORA_SET_BY_PEFT)


def validate_lora(raw: dict[str, Any]) -> dict[str, Any]:
    """`model.lora_config` checked against peft.LoraConfig (keys and value types), over sftlib's defaults."""
    if not raw:
        return dict(LORA_DEFAULTS)
    for key in raw:
        if key in LORA_SET_BY_PEFT:
            raise SftlibError(
                f"`model.lora_config.{key}` is filled in by PEFT itself.", "remove it from the config."
            )
    return {**LORA_DEFAULTS, **_checked(raw, lora_config_fields(), "model.lora_config")}


# --------------------------------------------------------------------------- training


def sft_config_default(name: str) -> Any:
    """trl.SFTConfig's default for one field (so sftlib's reads agree with TRL's)."""
    import trl

    return next(f.default for f in dataclasses.fields(trl.SFTConfig) if f.name == name)


@functools.cache
def sft_config_fields() -> dict[str, Any]:
    """SFTConfig's fields (imported lazily: trl is slow to import)."""
    import trl

    return init_fields(trl.SFTConfig)


# Fields that this config sets from elsewhere, so two places can't disagree.
_OWNED = {
    "max_length": "model.max_seq_length",
    "completion_only_loss": "the data layer (the loss always covers only the completion or assistant turns)",
    "assistant_only_loss": "the data layer (dataset.train_on), which masks any chat template",
    "dataset_text_field": "dataset.columns (e.g. columns: {text: body})",
}


# `training` keys that sftlib reads itself (they are not SFTConfig fields), with their types.
SFTLIB_TRAINING = {
    # Tokens per forward/backward pass: bounds activation memory (see sftlib.training.fast_path.plan). None: timed or per device.
    "pass_tokens": int | None,
    # Merge a LoRA adapter into the base once training ends (after the ranks have left); false: `sftlib merge` later.
    "merge": bool,
}
# Old `training` keys, still read, with the key that replaced them (a warning names it).
RENAMED_TRAINING = {"chunk_tokens": "pass_tokens"}


# SFTConfig fields where null means "sftlib decides" (the plan measures memory; see sftlib.training.fast_path.plan).
DECIDED_WHEN_NULL = ("activation_checkpointing", "gradient_checkpointing")


def validate_training(raw: dict[str, Any]) -> dict[str, Any]:
    raw = _renamed_training_keys(raw)
    fields = {**sft_config_fields(), **SFTLIB_TRAINING}
    values.check_keys(raw, fields, "training")
    for key, value in raw.items():
        if value is None and key in DECIDED_WHEN_NULL:
            continue
        if key in _OWNED:
            raise SftlibError(f"`training.{key}` is set by sftlib.", f"use {_OWNED[key]} instead.")
        values.check_type(value, fields[key], f"training.{key}")
    if raw.get("pass_tokens") is not None and raw["pass_tokens"] < 1:
        raise SftlibError(
            f"training.pass_tokens must be a positive number of tokens, got {raw['pass_tokens']}.",
            "set e.g. training.pass_tokens: 512, or null to let sftlib time the pass size.",
        )
    return dict(raw)


def _renamed_training_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with each old key (RENAMED_TRAINING) under its new name; a warning names the new key."""
    out = dict(raw)
    for old, new in RENAMED_TRAINING.items():
        if old not in out:
            continue
        if new in out:
            raise SftlibError(
                f"training.{old} and training.{new} are both set.", f"keep training.{new} only."
            )
        logging.getLogger("sftlib").warning(
            "warning: training.%s is deprecated; it is now training.%s (same meaning). Rename it in the config.",
            old,
            new,
        )
        out[new] = out.pop(old)
    return out


def _check_cross_fields(cfg: RunConfig) -> None:
    m = cfg.model
    if m.max_seq_length <= 0:
        raise SftlibError(f"model.max_seq_length must be positive, got {m.max_seq_length}.")
    if m.load_in_4bit and not m.use_lora:
        raise SftlibError(
            "model.load_in_4bit needs model.use_lora: true (4-bit weights can't be trained directly).",
            "set model.use_lora: true for QLoRA, or load_in_4bit: false for full fine-tuning.",
        )
    if m.lora_config["r"] <= 0:
        raise SftlibError(f"model.lora_config.r must be positive, got {m.lora_config['r']}.")
    if not 0 <= m.lora_config["lora_dropout"] < 1:
        raise SftlibError(
            f"model.lora_config.lora_dropout must be in [0, 1), got {m.lora_config['lora_dropout']}."
        )
    for n, d in enumerate(cfg.sources):
        _check_source(d, "dataset" if not isinstance(cfg.dataset, list) else f"dataset[{n}]")
    bf16, fp16 = cfg.training.get("bf16"), cfg.training.get("fp16")
    if bf16 and fp16:
        raise SftlibError("training.bf16 and training.fp16 are both true.", "pick one mixed precision.")


def _check_source(d: DatasetConfig, where: str) -> None:
    if d.eval_split and d.eval_size:
        raise SftlibError(f"{where}.eval_split and {where}.eval_size are both set.", "keep one of them.")
    if isinstance(d.eval_size, float) and not 0 < d.eval_size < 1:
        raise SftlibError(f"{where}.eval_size as a fraction must be in (0, 1), got {d.eval_size}.")
    if d.max_samples is not None and d.max_samples <= 0:
        raise SftlibError(f"{where}.max_samples must be positive, got {d.max_samples}.")
    if not 0 <= d.max_dropped_fraction <= 1:
        raise SftlibError(f"{where}.max_dropped_fraction must be in [0, 1], got {d.max_dropped_fraction}.")
    if d.fraction is not None and not 0 < d.fraction <= 1:
        raise SftlibError(f"{where}.fraction must be in (0, 1], got {d.fraction}.")
    if d.fraction is not None and d.max_samples is not None:
        raise SftlibError(f"{where}.fraction and {where}.max_samples are both set.", "keep one of them.")

"""The run config: a YAML file with `model`, `dataset` and `training` sections, validated loudly.

- `run_config`: `RunConfig` and its sections (`ModelConfig`, `DatasetConfig`, `training` checked against
  `trl.SFTConfig`, `model.lora_config` against `peft.LoraConfig`), read from YAML with `--set` overrides;
- `values`: YAML read safely, `dotted.key=value` overrides, each value checked against its field's type.

The config's names are exported here: `from sftlib.config import RunConfig, load_config`.
"""

from sftlib.config.run_config import (
    DECIDED_WHEN_NULL,
    DEFAULT_CONFIG,
    LORA_DEFAULTS,
    SFTLIB_TRAINING,
    DatasetConfig,
    ModelConfig,
    RunConfig,
    config_from_dict,
    load_config,
    output_dir_of,
    raw_config,
    sft_config_default,
)

__all__ = [
    "DECIDED_WHEN_NULL",
    "DEFAULT_CONFIG",
    "LORA_DEFAULTS",
    "SFTLIB_TRAINING",
    "DatasetConfig",
    "ModelConfig",
    "RunConfig",
    "config_from_dict",
    "load_config",
    "output_dir_of",
    "raw_config",
    "sft_config_default",
]

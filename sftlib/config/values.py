"""Config values: YAML read safely, `--set dotted.key=value` overrides, and each value checked against
the annotation of the field it sets (an unknown key is named, with the nearest valid one).

sftlib.config builds the RunConfig from these checked values; nothing here knows its sections.
"""

from __future__ import annotations

import difflib
import enum
import logging
import re
import types
import typing
from typing import Any, Literal, get_args, get_origin

import yaml

from sftlib.errors import SftlibError


class Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 wants `1.0e-4`; people write `1e-4`)."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    """Safe YAML (no Python tags), with scientific notation read as floats."""
    loader = Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def apply_override(raw: dict, item: str) -> None:
    """Set `a.b.c=value` in a nested dict. The value is parsed as YAML (`3`, `true`, `[a, b]`)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise SftlibError(
            f"--set {item!r} is not of the form dotted.key=value.", "write e.g. --set training.max_steps=3."
        )
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SftlibError(f"--set {key}: {'.'.join(parts[: i + 1])} is a value, not a section.")
        node = child
    try:
        node[parts[-1]] = parse_yaml(text) if text.strip() else None
    except yaml.YAMLError:
        node[parts[-1]] = text


# Names people carry over from other tools; spelling distance alone would not find these.
_SYNONYMS = {
    "rank": "r",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "lr": "learning_rate",
    "batch_size": "per_device_train_batch_size",
    "epochs": "num_train_epochs",
    "max_len": "max_seq_length",
    "model_name": "path",
    "dataset_name": "name",
}


def check_keys(raw: dict, valid, where: str) -> None:
    for key in raw:
        if key not in valid:
            path = f"{where}.{key}" if where else str(key)
            close = [_SYNONYMS[key]] if _SYNONYMS.get(key) in valid else []
            close = close or difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.5)
            hint = f"did you mean `{close[0]}`?" if close else f"valid keys here: {', '.join(sorted(valid))}."
            raise SftlibError(f"unknown config key `{path}`.", hint)


def type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_type(value: Any, tp, path: str) -> None:
    if not matches(value, tp):
        raise SftlibError(
            f"`{path}` is {value!r} ({type(value).__name__}), expected {type_name(tp)}.",
            f"give `{path.rsplit('.', 1)[-1]}` a value of that type.",
        )


def matches(value: Any, tp) -> bool:
    if tp is Any or tp is typing.Any:
        return True
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in get_args(tp))
    if origin is Literal:
        return value in get_args(tp)
    if tp is type(None):
        return value is None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return value in {m.value for m in tp} or value in {m.name for m in tp}
    if origin in (list, tuple, set):
        (inner, *_) = get_args(tp) or (Any,)
        return isinstance(value, list) and all(matches(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if isinstance(tp, type):
        return isinstance(value, tp)
    # No SFTConfig field of the pinned TRL has such an annotation (tests/test_config.py checks): say so.
    logging.getLogger("sftlib").warning(
        "warning: sftlib can't check values of type %s; trl.SFTConfig validates this one itself.", tp
    )
    return True

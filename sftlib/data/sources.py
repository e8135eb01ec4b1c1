"""Load a dataset from the hub, a file or a folder; detect its format; normalize it to TRL's columns.

Canonical columns after `normalize` (the ones `trl.SFTTrainer` understands), plus `index`, the
example's row in its source split, so that every tokenized example can be traced back:

- `messages`: list of messages                    (formats messages, sharegpt, alpaca)
- `prompt`, `completion`: strings, or message lists (format prompt_completion)
- `text`: a string, trained on entirely            (format text)
- `tools`, `chat_template_kwargs`: the row's tool schemas and chat-template arguments, when the
  source has these columns (JSON strings are parsed); rendering passes them to the template

A message keeps every key the template may read (`tool_calls`, `tool_call_id`, `name`,
`reasoning_content`, `thinking`, ...), stored as JSON so rows of different shapes share a column.
Normalization only reshapes; sftlib.data.conversations checks a conversation's roles, order and tool calls
when it is tokenized, where a bad row becomes a counted drop reason instead of a crash.
"""

from __future__ import annotations

import glob
import json
import logging
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict, Features, Json, Value

from sftlib.config import DatasetConfig
from sftlib.data import chat, formats, label_cache
from sftlib.errors import SftlibError, first_line

logger = logging.getLogger("sftlib")

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",  # scraped ShareGPT dumps name the bot by product too
    "bing": "assistant",
    "system": "system",
    "observation": "tool",  # glaive / LLaMA-Factory: a tool's result
    "tool": "tool",
}
FUNCTION_CALL = "function_call"  # glaive / LLaMA-Factory: an assistant turn that calls tools (JSON value)
# Row-level columns a chat template reads, kept beside the messages (TRL passes them the same way).
TEMPLATE_COLUMNS = ("tools", "chat_template_kwargs")


# --------------------------------------------------------------------------- loading


def load_raw(ds_cfg: DatasetConfig, seed: int = 42) -> dict[str, Dataset]:
    """The configured splits as {"train": ..., "eval": ...} ("eval" only when one is configured).

    Columns are renamed by `ds_cfg.columns` and an `index` column (row in the source split) is added
    before the eval cut, so it survives `eval_size` and `max_samples`.
    """
    dsd = _load_source(ds_cfg)
    train = _split(dsd, ds_cfg.split, ds_cfg.name)
    out = {"train": _with_index(_rename(train, ds_cfg.columns))}
    if ds_cfg.eval_split:
        out["eval"] = _with_index(_rename(_split(dsd, ds_cfg.eval_split, ds_cfg.name), ds_cfg.columns))
    elif ds_cfg.eval_size:
        size, n = ds_cfg.eval_size, len(out["train"])
        if isinstance(size, int) and not 0 < size < n:
            raise SftlibError(
                f"dataset.eval_size={size} must be between 1 and {n - 1} (the split has {n} rows).",
                "lower dataset.eval_size, or give a fraction such as 0.1.",
            )
        cut = out["train"].train_test_split(test_size=size, seed=seed)
        if len(cut["test"]) == 0 or len(cut["train"]) == 0:
            raise SftlibError(f"dataset.eval_size={size} leaves an empty split of {n} rows.")
        out["train"], out["eval"] = cut["train"], cut["test"]
    if ds_cfg.max_samples is not None and ds_cfg.max_samples < len(out["train"]):
        out["train"] = out["train"].select(range(ds_cfg.max_samples))
    if ds_cfg.fraction is not None and ds_cfg.fraction < 1:
        keep = max(1, round(ds_cfg.fraction * len(out["train"])))
        out["train"] = out["train"].shuffle(seed=seed).select(range(keep)).flatten_indices()
    return out


def _load_source(ds_cfg: DatasetConfig) -> DatasetDict:
    name = ds_cfg.name
    path = Path(name).expanduser()
    if glob.has_magic(name):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise SftlibError(
                f"dataset.name {name!r} matches no file.", "check the pattern and the working directory."
            )
        return _load_files(files)
    if path.is_file():
        return _load_files([path])
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            # A saved single Dataset has no split names: like a single file, it is `train`.
            return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
        files = sorted(p for p in path.rglob("*") if p.suffix in BUILDERS)
        if not files:
            raise SftlibError(
                f"dataset folder {path} holds no {'/'.join(BUILDERS)} files and no save_to_disk dataset.",
                "point dataset.name at data files named by split (train.jsonl, test.jsonl) or a save_to_disk folder.",
            )
        return _guard_load(files, lambda: datasets.load_dataset(str(path)))
    if _looks_local(name):
        raise SftlibError(
            f"dataset file {name!r} does not exist.", "check dataset.name and the working directory."
        )
    try:  # a hub id (cannot be reached in tests; kept for real use)
        return datasets.load_dataset(name, ds_cfg.subset)
    except Exception as exc:
        raise SftlibError(
            f"could not load dataset {name!r} from the hub: {first_line(exc)}",
            "check the id and dataset.subset, or point dataset.name at a local file.",
        ) from exc


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).suffix in BUILDERS or name.count("/") > 1


def _load_files(files: list[Path]) -> DatasetDict:
    """Files named directly (or by a pattern) are one split, `train`: other splits come from
    dataset.eval_size, or from a folder of files named by split."""
    suffixes = {f.suffix for f in files}
    if not suffixes <= set(BUILDERS) or len({BUILDERS[s] for s in suffixes}) != 1:
        raise SftlibError(
            f"cannot load {', '.join(sorted(suffixes))} files together: {files[0]} ...",
            f"use files of one kind: {', '.join(BUILDERS)}.",
        )
    builder = BUILDERS[files[0].suffix]
    return _guard_load(
        files, lambda: datasets.load_dataset(builder, data_files={"train": [str(f) for f in files]})
    )


def _guard_load(files: list[Path], load) -> DatasetDict:
    """Run `load`; on failure, name the bad file and JSON line instead of datasets' traceback.

    The files are scanned only after a failure, so a good dataset costs nothing extra (and a second
    run reads datasets' cache without parsing the JSON at all).
    """
    try:
        return load()
    except Exception as exc:
        for f in files:
            if f.suffix in (".json", ".jsonl"):
                scan_json_lines(f)
        raise SftlibError(
            f"could not load {', '.join(map(str, files[:3]))}: {first_line(exc.__cause__ or exc)}",
            "make every row have the same columns, each holding one type.",
        ) from exc


def scan_json_lines(path: Path) -> None:
    """Raise SftlibError naming the first malformed line of a JSON Lines (or JSON array) file."""
    with open(path, encoding="utf-8") as fh:
        head = fh.read(1024).lstrip()
    if head.startswith("["):  # one JSON document, not JSON Lines
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SftlibError(f"{path} line {exc.lineno}: malformed JSON ({exc.msg}).") from None
        return
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SftlibError(
                    f"{path} line {lineno}: malformed JSON ({exc.msg} at column {exc.colno}).",
                    "fix or delete that line (each line must be one JSON object).",
                ) from None
            if not isinstance(row, dict):
                raise SftlibError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}.")


def _split(dsd: DatasetDict, split: str, name: str) -> Dataset:
    if split not in dsd:
        raise SftlibError(
            f"dataset {name!r} has no split {split!r}; it has: {', '.join(dsd)}.",
            "set dataset.split / dataset.eval_split to one of those, or hold rows out with dataset.eval_size "
            "(a single file, or a dataset saved as one, has only `train`).",
        )
    return dsd[split]


def _rename(ds: Dataset, columns: dict[str, str] | None) -> Dataset:
    """Apply `dataset.columns` ({canonical: source}); the canonical names are what detection sees."""
    if not columns:
        return ds
    present = ds.column_names
    for canon, source in columns.items():
        if source not in present:
            raise SftlibError(
                f"dataset.columns maps {canon} to {source!r}, which is not a column; columns: {', '.join(present)}.",
                "fix dataset.columns.",
            )
    mapping = {s: c for c, s in columns.items() if s != c}
    clash = [c for c in mapping.values() if c in present and c not in mapping]
    if clash:
        ds = ds.remove_columns(clash)  # the user chose another source column for this name
    return ds.rename_columns(mapping)


def _with_index(ds: Dataset) -> Dataset:
    if "index" in ds.column_names:
        ds = ds.rename_column("index", "source_index")
    return ds.add_column("index", list(range(len(ds))))


def normalize(ds: Dataset, fmt: str, num_proc: int | None = None) -> Dataset:
    """Reshape `ds` (in format `fmt`) to canonical columns plus `index` (see the module docstring).

    Messages keep every key but those Arrow filled with null (`chat.drop_none`); a content that is
    neither a string nor a list of content parts, or a role that is not a string, becomes None, which
    tokenization reports as `non_string_content` / `unknown_role`.
    """
    formats.check_columns(ds, fmt)
    if "index" not in ds.column_names:  # a Dataset built by hand rather than by load_raw
        ds = _with_index(ds)
    # Explicit features: a batch whose contents are all None must not fix the column type to null.
    string = Value("string")
    if fmt == "text":
        columns = {"text": string}
    elif fmt == "prompt_completion":
        kind = Json() if len(ds) and isinstance(ds[0]["prompt"], list) else string
        columns = {"prompt": kind, "completion": kind}
    else:
        columns = {"messages": Json()}
    if fmt != "text":
        columns |= {c: Json() for c in TEMPLATE_COLUMNS if c in ds.column_names}
    return ds.map(
        _normalize_row,
        fn_kwargs={
            "fmt": fmt,
            "conversational": isinstance(columns.get("prompt"), Json),
            "code_version": label_cache.code_version(),
        },
        remove_columns=[c for c in ds.column_names if c != "index"],
        features=Features({**columns, "index": ds.features["index"]}),
        num_proc=num_proc,
        desc=f"Normalizing {fmt} rows",
    )


def _normalize_row(row: dict, fmt: str, conversational: bool, code_version: str) -> dict:
    if fmt == "text":
        return {"text": _str_or_none(row["text"])}
    out = {c: _template_column(row[c]) for c in TEMPLATE_COLUMNS if c in row}
    if fmt == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        if conversational:
            return out | {"prompt": _messages(prompt), "completion": _messages(completion)}
        return out | {"prompt": _str_or_none(prompt), "completion": _str_or_none(completion)}
    if fmt == "alpaca":
        return out | {"messages": alpaca_to_messages(row)}
    turns = row["messages"] if "messages" in row else row["conversations"]
    if fmt == "sharegpt":
        return out | {"messages": sharegpt_to_messages(turns)}
    return out | {"messages": _messages(turns)}


def _template_column(value: Any) -> Any:
    """A row's `tools` / `chat_template_kwargs`: JSON strings parsed (as TRL does), nulls dropped."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except json.JSONDecodeError:
            return value  # kept as written: tokenization reports it (`bad_tool_call`)
    return chat.drop_none(value) or None


def alpaca_to_messages(row: dict) -> list[dict]:
    """system? + user (instruction, then a blank line and input if any) + assistant (output)."""
    instruction, extra = row.get("instruction"), row.get("input")
    user = instruction
    if isinstance(instruction, str) and isinstance(extra, str) and extra.strip():
        user = f"{instruction}\n\n{extra}"
    messages = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": _str_or_none(user)})
    messages.append({"role": "assistant", "content": _str_or_none(row.get("output"))})
    return messages


def sharegpt_to_messages(turns: Any) -> list[dict]:
    """ShareGPT turns ({from, value}) to messages. human/gpt/system map to user/assistant/system,
    `observation` to a `tool` result, and `function_call` (a JSON call, or a list of calls) to an
    assistant turn with `tool_calls` (a value that is not JSON is kept as a string: `bad_tool_call`).
    Unknown roles are kept as given."""
    out = []
    for turn in turns if isinstance(turns, list) else []:
        turn = turn if isinstance(turn, dict) else {}
        source = turn.get("from", turn.get("role"))
        value = _content(turn.get("value", turn.get("content")))
        if source == FUNCTION_CALL:
            try:
                calls = json.loads(value) if isinstance(value, str) else value
            except json.JSONDecodeError:
                calls = value
            calls = calls if isinstance(calls, list) else [calls]
            out.append({"role": "assistant", "content": "", "tool_calls": calls, **_flags(turn)})
            continue
        role = SHAREGPT_ROLES.get(source, source) if isinstance(source, str) else None
        out.append({"role": role, "content": value, **_flags(turn)})
    return out


def _flags(turn: dict) -> dict:
    """The turn's training flags (chat.TRAIN_FLAGS), as written: conversations checks them."""
    return {k: turn[k] for k in chat.TRAIN_FLAGS if turn.get(k) is not None}


def _messages(turns: Any) -> list[dict]:
    out = []
    for turn in turns if isinstance(turns, list) else []:
        turn = chat.drop_none(turn) if isinstance(turn, dict) else {}
        message = {
            **turn,
            "role": _str_or_none(turn.get("role")),
            "content": _content(turn.get("content")),
        }
        if message["content"] is None and "content" not in turn and turn.get("tool_calls"):
            message["content"] = ""  # an OpenAI tool-call turn may leave content out
        out.append(message)
    return out


def _content(value: Any) -> str | list | None:
    """A message's content: a string, or a list of content parts (OpenAI's shape; conversations
    checks each part); anything else None (`non_string_content`)."""
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        return [chat.drop_none(p) for p in value]
    return _str_or_none(value)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None

"""The bad-input catalogue: every entry point, every kind of mistake, one clear line.

Each case runs a command on one bad input and checks that it exits non-zero, that its last line
starts with `error:`, says what is wrong (`what`) and how to fix it (`fix`, after "Fix:"), and that
no traceback is printed. Most cases run in-process through `sftlib.cli.main`; `SUBPROCESS` runs a
few through a real `python -m sftlib` to prove what a user sees, and `--debug` brings the
traceback back.
"""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sftlib import cli
from sftlib.models import embedded

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "data"
TINY = embedded.resolve("embedded:tiny-random-llama")


class Workspace:
    """Files the cases point at, all under one tmp_path."""

    def __init__(self, root: Path):
        self.root = root
        self.chat = root / "chat.jsonl"
        rows = [
            {
                "messages": [
                    {"role": "user", "content": f"{i} + 1?"},
                    {"role": "assistant", "content": str(i + 1)},
                ]
            }
            for i in range(8)
        ]
        self.chat.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self.file = root / "a_file"
        self.file.write_text("not a folder")
        self.out = root / "out"

    def config(self, text: str | None = None, name: str = "c.yaml", **changes) -> str:
        """configs/tiny.yaml on local chat rows, with `changes` given as {"section.key": value}."""
        path = self.root / name
        if text is not None:
            path.write_text(text)
            return str(path)
        raw = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
        raw["dataset"].update(name=str(self.chat), eval_split=None, max_samples=None)
        raw["training"].update(output_dir=str(self.out), max_steps=1, disable_tqdm=True)
        for dotted, value in changes.items():
            *parents, last = dotted.split(".")
            node = raw
            for p in parents:
                node = node[p]
            if value is _DROP:
                node.pop(last)
            else:
                node[last] = value
        path.write_text(yaml.safe_dump(raw))
        return str(path)

    def model_copy(self, name: str, drop: tuple[str, ...] = (), untemplated: bool = False) -> str:
        """A copy of the tiny model folder without the files in `drop`; `untemplated` removes its chat template."""
        folder = self.root / name
        shutil.copytree(TINY, folder, ignore=shutil.ignore_patterns(*drop))
        if untemplated:
            (folder / "chat_template.jinja").unlink(missing_ok=True)
            tok = json.loads((folder / "tokenizer_config.json").read_text())
            tok.pop("chat_template", None)
            (folder / "tokenizer_config.json").write_text(json.dumps(tok))
        return str(folder)


_DROP = object()


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path)


def current_stderr_for_library_logs() -> None:
    """datasets and transformers bind their log handler to the sys.stderr of the moment they were
    first imported: in pytest, an earlier test's closed capture stream. A real process has one stderr."""
    for name in ("datasets", "transformers"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stderr  # not setStream: it flushes the old, closed stream


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    current_stderr_for_library_logs()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err


def assert_clear_error(code: int, err: str, what: str, fix: str | None = None) -> str:
    assert code != 0
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), line
    assert what in line, line
    message, sep, fix_text = line.partition(" Fix: ")
    assert sep and fix_text.strip(), f"no fix given: {line}"
    if fix is not None:
        assert fix in fix_text, line
    return line


# ----------------------------------------------------------------- config (train, check, masks, merge)


def test_config_file_missing(ws, capsys):
    code, err = run_cli(["train", "--config", ws.root / "nope.yaml"], capsys)
    assert_clear_error(code, err, "nope.yaml does not exist", "--config")


def test_config_invalid_yaml_names_the_line(ws, capsys):
    code, err = run_cli(["check", "--config", ws.config("model:\n  path: [unclosed\n")], capsys)
    assert_clear_error(code, err, "is not valid YAML at line 3", "correct the YAML")


def test_config_python_object_tag_is_refused(ws, capsys):
    config = ws.config("model: !!python/object/apply:os.system ['echo pwned > pwned.txt']\n")
    code, err = run_cli(["train", "--config", config], capsys)
    assert_clear_error(
        code, err, "could not determine a constructor for the tag", "!!python/object are refused"
    )
    assert not (Path.cwd() / "pwned.txt").exists()


def test_config_unknown_key_suggests_the_nearest(ws, capsys):
    code, err = run_cli(
        [
            "masks",
            "--config",
            ws.config(),
            "--set",
            "training.learning_rat=0.1",
            "--out",
            ws.root / "m.jsonl",
        ],
        capsys,
    )
    assert_clear_error(code, err, "unknown config key `training.learning_rat`", "learning_rate")


def test_config_wrong_type(ws, capsys):
    code, err = run_cli(["train", "--config", ws.config(), "--set", "training.max_steps=many"], capsys)
    assert_clear_error(code, err, "`training.max_steps` is 'many' (str), expected int", "max_steps")


def test_config_set_without_equals(ws, capsys):
    code, err = run_cli(["check", "--config", ws.config(), "--set", "training.max_steps"], capsys)
    assert_clear_error(code, err, "is not of the form dotted.key=value", "--set training.max_steps=3")


def test_config_missing_section(ws, capsys):
    code, err = run_cli(["merge", "--config", ws.config(dataset=_DROP)], capsys)
    assert_clear_error(code, err, "the config has no `dataset` section", "add a `dataset:` mapping")


def test_config_unknown_dtype(ws, capsys):
    code, err = run_cli(["train", "--config", ws.config(**{"model.dtype": "float8"})], capsys)
    assert_clear_error(code, err, "`model.dtype` is 'float8'", "dtype")


def test_config_4bit_without_lora(ws, capsys):
    code, err = run_cli(
        ["train", "--config", ws.config(**{"model.load_in_4bit": True, "model.use_lora": False})], capsys
    )
    assert_clear_error(code, err, "load_in_4bit needs model.use_lora: true", "use_lora: true")


# ----------------------------------------------------------------- model


def test_model_path_missing(ws, capsys):
    code, err = run_cli(["train", "--config", ws.config(**{"model.path": str(ws.root / "no_model")})], capsys)
    assert_clear_error(code, err, "does not exist", "point model.path at")


def test_model_folder_without_config_json(ws, capsys):
    model = ws.model_copy("no_config", drop=("config.json",))
    code, err = run_cli(["check", "--config", ws.config(**{"model.path": model})], capsys)
    assert_clear_error(code, err, "has no config.json", "save_pretrained")


def test_model_weights_only_as_pickle_are_not_loaded(ws, capsys):
    import torch
    from safetensors.torch import load_file

    model = ws.model_copy("pickled", drop=("model.safetensors",))
    torch.save(load_file(Path(TINY) / "model.safetensors"), Path(model) / "pytorch_model.bin")
    code, err = run_cli(["train", "--config", ws.config(**{"model.path": model})], capsys)
    assert_clear_error(code, err, "could not load model", "safetensors")


def test_chat_data_with_a_tokenizer_without_chat_template(ws, capsys):
    model = ws.model_copy("untemplated", untemplated=True)
    code, err = run_cli(["check", "--config", ws.config(**{"model.path": model})], capsys)
    assert_clear_error(code, err, "the tokenizer has no chat template", "chat_template")


def test_lora_target_modules_that_do_not_exist(ws, capsys):
    config = ws.config(**{"model.lora_config.target_modules": ["q_proj", "query_key_value"]})
    code, err = run_cli(["train", "--config", config], capsys)
    assert_clear_error(code, err, "['query_key_value'] match no linear layer", "q_proj")


def test_4bit_without_bitsandbytes_installed(ws, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a)
    )
    code, err = run_cli(["train", "--config", ws.config(**{"model.load_in_4bit": True})], capsys)
    assert_clear_error(code, err, "needs bitsandbytes, which is not installed", "pip install bitsandbytes")


# ----------------------------------------------------------------- data


def test_data_file_missing(ws, capsys):
    code, err = run_cli(
        ["check", "--config", ws.config(**{"dataset.name": str(ws.root / "nope.jsonl")})], capsys
    )
    assert_clear_error(code, err, "nope.jsonl", "dataset.name")


def test_data_malformed_json_line_names_file_and_line(ws, capsys):
    code, err = run_cli(
        [
            "masks",
            "--config",
            ws.config(**{"dataset.name": str(FIXTURES / "malformed.jsonl")}),
            "--out",
            ws.root / "m.jsonl",
        ],
        capsys,
    )
    assert_clear_error(code, err, "malformed.jsonl line 3: malformed JSON", "fix or delete that line")


def test_data_with_unknown_columns(ws, capsys):
    code, err = run_cli(
        ["check", "--config", ws.config(**{"dataset.name": str(FIXTURES / "unknown_columns.jsonl")})], capsys
    )
    assert_clear_error(code, err, "columns", "dataset.columns")


def test_data_missing_the_columns_of_its_declared_format(ws, capsys):
    code, err = run_cli(["check", "--config", ws.config(**{"dataset.format": "alpaca"})], capsys)
    assert_clear_error(code, err, "messages", "dataset.format")


def test_data_split_that_does_not_exist(ws, capsys):
    config = ws.config(**{"dataset.name": str(FIXTURES / "split_dir"), "dataset.split": "validation"})
    code, err = run_cli(["check", "--config", config], capsys)
    assert_clear_error(code, err, "has no split 'validation'", "dataset.split")


# ----------------------------------------------------------------- output folder and disk


def test_output_dir_under_a_regular_file(ws, capsys):
    code, err = run_cli(
        ["train", "--config", ws.config(**{"training.output_dir": str(ws.file / "run")})], capsys
    )
    assert_clear_error(code, err, "is a file, not a folder", "training.output_dir")


def test_output_dir_permission_denied(ws, capsys, monkeypatch):
    # Tests run as root here, where chmod does not stop writes: the refusal is simulated where the run first writes.
    def denied(cfg, output_dir):
        raise PermissionError(errno.EACCES, "Permission denied", str(output_dir))

    monkeypatch.setattr("sftlib.outputs.saving.write_resolved", denied)
    code, err = run_cli(["train", "--config", ws.config()], capsys)
    assert_clear_error(code, err, f"permission denied ({ws.out})", "a path you can write to")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_output_dir_in_a_read_only_folder(ws, capsys):
    parent = ws.root / "read_only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, err = run_cli(
            ["train", "--config", ws.config(**{"training.output_dir": str(parent / "run")})], capsys
        )
    finally:
        parent.chmod(0o755)
    assert_clear_error(code, err, "permission denied", "a path you can write to")


def test_training_with_a_full_disk(ws, capsys, monkeypatch):
    def full(cfg, output_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(output_dir))

    monkeypatch.setattr("sftlib.outputs.saving.write_resolved", full)
    code, err = run_cli(["train", "--config", ws.config()], capsys)
    assert_clear_error(code, err, "the disk is full", "free disk space")


def test_masks_with_a_full_disk_raised_inside_a_library(ws, capsys, monkeypatch):
    def full(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("failed writing file") from exc  # as torch/safetensors re-raise it

    monkeypatch.setattr("sftlib.data.export.write_masks_jsonl", full)
    code, err = run_cli(["masks", "--config", ws.config(), "--out", ws.root / "m.jsonl"], capsys)
    assert_clear_error(code, err, "the disk is full", "free disk space")


def test_masks_out_under_a_regular_file(ws, capsys):
    code, err = run_cli(["masks", "--config", ws.config(), "--out", ws.file / "m.jsonl"], capsys)
    assert_clear_error(code, err, "is a file, not a folder", "the output path you gave")


def test_training_into_a_finished_run(ws, capsys):
    ws.out.mkdir()
    (ws.out / "run_info.json").write_text("{}")
    code, err = run_cli(["train", "--config", ws.config()], capsys)
    assert_clear_error(code, err, "already holds a finished run", "--overwrite")


def test_resume_with_no_checkpoint(ws, capsys):
    code, err = run_cli(["train", "--config", ws.config(), "--resume"], capsys)
    assert_clear_error(code, err, "holds no checkpoint-* folder", "save_strategy")


# ----------------------------------------------------------------- command-line arguments


def test_masks_without_out(ws, capsys):
    code, err = run_cli(["masks", "--config", ws.config()], capsys)
    assert code == 2
    assert_clear_error(code, err, "the following arguments are required: --out", "sftlib masks --help")


def test_masks_limit_not_positive(ws, capsys):
    code, err = run_cli(
        ["masks", "--config", ws.config(), "--limit", "0", "--out", ws.root / "m.jsonl"], capsys
    )
    assert_clear_error(code, err, "--limit must be positive", "--limit")


def test_masks_eval_split_not_configured(ws, capsys):
    code, err = run_cli(
        ["masks", "--config", ws.config(), "--split", "eval", "--out", ws.root / "m.jsonl"], capsys
    )
    assert_clear_error(code, err, "defines no eval split", "dataset.eval_split")


def test_merge_dtype_not_offered(ws, capsys):
    code, err = run_cli(["merge", "--config", ws.config(), "--dtype", "float16"], capsys)
    assert_clear_error(code, err, "invalid choice: 'float16'", "--help")


# ----------------------------------------------------------------- merge, generate


def test_merge_without_a_trained_adapter(ws, capsys):
    code, err = run_cli(["merge", "--config", ws.config()], capsys)
    assert_clear_error(code, err, "holds no LoRA adapter", "sftlib train")


def test_generate_from_a_missing_model(ws, capsys):
    code, err = run_cli(["generate", "--model", ws.root / "no_model", "hello"], capsys)
    assert_clear_error(code, err, "does not exist", "saved model folder")


def test_generate_with_a_folder_that_is_not_an_adapter(ws, capsys):
    code, err = run_cli(["generate", "--model", TINY, "--adapter", TINY, "hello"], capsys)
    assert_clear_error(code, err, "holds no LoRA adapter", "lora_weights/")


# ----------------------------------------------------------------- pipeline, demo


def test_pipeline_with_a_missing_config(ws, capsys):
    code, err = run_cli(["pipeline", "--config", ws.root / "nope.yaml", "--out", ws.root / "p"], capsys)
    assert_clear_error(code, err, "does not exist", "--config")


def test_pipeline_only_matching_no_notebook(ws, capsys):
    code, err = run_cli(["pipeline", "--config", ws.config(), "--out", ws.root / "p", "--only", "99"], capsys)
    assert_clear_error(code, err, "--only 99 matches no notebook", "use a prefix of")


def test_pipeline_parameter_no_notebook_declares(ws, capsys):
    code, err = run_cli(
        ["pipeline", "--config", ws.config(), "--out", ws.root / "p", "-p", "NO_SUCH_PARAM", "1"], capsys
    )
    assert_clear_error(code, err, "no selected notebook declares parameter NO_SUCH_PARAM", "declared")


def test_demo_with_a_bad_override(ws, capsys):
    code, err = run_cli(
        ["demo", "--config", ws.config(), "--out", ws.root / "d", "--set", "training.learning_rat=0.1"],
        capsys,
    )
    assert_clear_error(code, err, "unknown config key `training.learning_rat`", "learning_rate")


# ----------------------------------------------------------------- through a real process

HIDE_BITSANDBYTES = "import sys; sys.modules['bitsandbytes'] = None; from sftlib.cli import main; sys.exit(main(sys.argv[1:]))"


def run_process(argv: list[str], *, hide_bitsandbytes: bool = False) -> subprocess.CompletedProcess:
    head = ["-c", HIDE_BITSANDBYTES] if hide_bitsandbytes else ["-m", "sftlib"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *head, *map(str, argv)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


SUBPROCESS = {
    "malformed_json": (
        lambda ws: ["check", "--config", ws.config(**{"dataset.name": str(FIXTURES / "malformed.jsonl")})],
        "malformed.jsonl line 3",
    ),
    "usage_error": (lambda ws: ["generate"], "the following arguments are required"),
}


@pytest.mark.parametrize("case", SUBPROCESS)
def test_a_real_process_prints_one_error_line_and_no_traceback(ws, case):
    argv, what = SUBPROCESS[case]
    proc = run_process(argv(ws))
    assert_clear_error(proc.returncode, proc.stderr, what)


def test_a_real_process_without_bitsandbytes_explains_how_to_install_it(ws):
    proc = run_process(
        ["train", "--config", ws.config(**{"model.load_in_4bit": True})], hide_bitsandbytes=True
    )
    assert_clear_error(
        proc.returncode, proc.stderr, "needs bitsandbytes, which is not installed", "pip install bitsandbytes"
    )


def test_debug_shows_the_traceback(ws):
    proc = run_process(
        ["--debug", "train", "--config", ws.config(**{"model.path": str(ws.root / "no_model")})]
    )
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr and "SftlibError" in proc.stderr

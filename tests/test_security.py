"""What a config or a model folder can make sftlib run: no remote code unless asked, no YAML tags,
no unpickled weights."""

import re
from pathlib import Path

import pytest
import yaml

from sftlib.config import ModelConfig, load_config
from sftlib.errors import SftlibError
from sftlib.models import embedded, modeling
from sftlib.outputs import merge

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "sftlib").glob("*.py"))


@pytest.fixture
def from_pretrained_calls(monkeypatch):
    """Record the keyword arguments of every model/tokenizer from_pretrained call, without loading."""
    import transformers

    calls = []

    def record(kind):
        def from_pretrained(path, *args, **kwargs):
            calls.append((kind, kwargs))
            raise OSError("not loaded in this test")

        return from_pretrained

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record("model"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record("tokenizer"))
    return calls


def tiny_config(tmp_path, *overrides):
    return load_config(ROOT / "configs/tiny.yaml", [f"training.output_dir={tmp_path}", *overrides])


def test_remote_code_is_not_trusted_unless_the_config_says_so(tmp_path, from_pretrained_calls):
    cfg = tiny_config(tmp_path)
    assert cfg.model.trust_remote_code is False
    for load in (modeling.load_tokenizer, modeling.load_model):
        with pytest.raises(SftlibError):
            load(cfg.model)
    assert [kind for kind, _ in from_pretrained_calls] == ["tokenizer", "model"]
    assert all(kwargs["trust_remote_code"] is False for _, kwargs in from_pretrained_calls)

    from_pretrained_calls.clear()
    trusted = tiny_config(tmp_path, "model.trust_remote_code=true")
    for load in (modeling.load_tokenizer, modeling.load_model):
        with pytest.raises(SftlibError):
            load(trusted.model)
    assert all(kwargs["trust_remote_code"] is True for _, kwargs in from_pretrained_calls)


def test_models_are_loaded_from_safetensors_only(tmp_path, from_pretrained_calls):
    with pytest.raises(SftlibError):
        modeling.load_model(tiny_config(tmp_path).model)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(SftlibError):  # merging, like generation, loads through modeling.load_model
        merge.load_base_with_adapter(
            ModelConfig(path=embedded.resolve("embedded:tiny-random-llama")), tmp_path / "adapter"
        )
    models = [kwargs for kind, kwargs in from_pretrained_calls if kind == "model"]
    assert len(models) == 2
    assert all(kwargs["use_safetensors"] is True for kwargs in models)
    assert not any(kwargs.get("trust_remote_code") for kwargs in models)


def test_a_yaml_python_tag_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SftlibError, match="could not determine a constructor") as err:
        load_config(config)
    assert "!!python/object are refused" in err.value.fix
    assert not marker.exists()


def test_no_module_uses_an_unsafe_yaml_loader_or_unpickles():
    unsafe = re.compile(r"yaml\.(load|unsafe_load|full_load)\(|Loader\s*=|pickle\.loads?\(|torch\.load\(")
    found = [
        f"{p.name}:{i}"
        for p in SOURCES
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if unsafe.search(line)
    ]
    assert not found


def test_the_config_yaml_loader_is_a_safe_loader_that_reads_scientific_floats():
    from sftlib.config.values import Loader, parse_yaml

    assert issubclass(Loader, yaml.SafeLoader)
    assert parse_yaml("lr: 1e-4\nsteps: 3\nname: 1e4x") == {"lr": 1e-4, "steps": 3, "name": "1e4x"}


def test_resolved_config_is_plain_yaml(tmp_path):
    from sftlib.outputs.saving import write_resolved

    path = write_resolved(tiny_config(tmp_path), tmp_path)
    assert "!!" not in path.read_text()
    assert yaml.safe_load(path.read_text())["model"]["trust_remote_code"] is False

"""Data-parallel training on CPU: both launch paths, real world size 2, one model across the ranks.

The slow tests start two gloo processes on the tiny model: through `accelerate launch` (the CLI path)
and through `sftlib.training.launch.launch` (the notebook path). The fast ones check the launch configs in
configs/accelerate/ and the guards against launches that would not be one training run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sftlib.config import load_config
from sftlib.errors import SftlibError
from sftlib.training import distributed, launch
from sftlib.training.train import train
from tests.conftest import write_chat_rows

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = sorted((ROOT / "configs/accelerate").glob("*.yaml"))
ROWS = 16  # 16 rows, 4 per device and step: 4 steps on one process, 2 on two


def one_epoch(data: Path, out: Path, batch: int = 4, pass_tokens: int | None = None) -> list[str]:
    """Overrides for one full epoch over a fixed dataset: the step count then follows the world size.

    pass_tokens=1: one example per micro-batch (4 accumulated per step on each rank, gradients reduced after
    the last), where one process would run one packed row per pass.
    """
    return [
        f"training.pass_tokens={'null' if pass_tokens is None else pass_tokens}",
        f"dataset.name={data}",
        "dataset.eval_split=null",
        "dataset.max_samples=null",
        f"training.output_dir={out}",
        "training.max_steps=-1",
        "training.num_train_epochs=1",
        f"training.per_device_train_batch_size={batch}",
    ]


def accelerate_launch(config_file: Path, overrides: list[str], stamps: Path, num_processes: int = 2):
    """`accelerate launch ... sftlib train`, through tests/launch_stamped.py: the same CLI, plus the stamps of
    when each rank exits and when the merge starts (in `stamps`)."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
        "--num_processes", str(num_processes), "--main_process_port", str(launch.free_port()),
        str(ROOT / "tests/launch_stamped.py"), "train", "--config", "configs/tiny.yaml",
    ]  # fmt: skip
    for item in overrides:
        cmd += ["--set", item]
    env = {**os.environ, "SFTLIB_TEST_STAMPS": str(stamps)}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def run_info(out: Path) -> dict:
    return json.loads((out / "run_info.json").read_text())


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One 2-process DDP run through `accelerate launch --config_file configs/accelerate/ddp.yaml`."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = write_chat_rows(tmp / "rows.jsonl", ROWS)
    proc = accelerate_launch(
        ROOT / "configs/accelerate/ddp.yaml", one_epoch(data, tmp / "out", pass_tokens=1), tmp / "stamps"
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return {"data": data, "out": tmp / "out", "output": proc.stdout + proc.stderr, "stamps": tmp / "stamps"}


# --------------------------------------------------------------------------- 2 processes, CPU, gloo


@pytest.mark.slow
def test_accelerate_launch_trains_one_model_on_two_cpu_processes_in_half_the_steps(ddp_run, tmp_path):
    single = train(load_config(ROOT / "configs/tiny.yaml", one_epoch(ddp_run["data"], tmp_path / "single")))
    info = run_info(ddp_run["out"])

    assert info["world_size"] == 2 and info["distributed_type"] == "MULTI_CPU"
    assert single["world_size"] == 1 and single["global_step"] == ROWS // 4
    assert info["global_step"] * 2 == single["global_step"]  # each step consumed a batch on each rank
    assert info["plan"]["split"] == "micro_batches"  # the same number of passes on every rank
    assert info["plan"]["passes"] == 4 * info["global_step"]  # 4 one-example micro-batches per step
    fingerprints = info["rank_param_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]  # the ranks hold one model
    assert (ddp_run["out"] / "lora_weights" / "adapter_model.safetensors").is_file()
    assert (ddp_run["out"] / "model.safetensors").is_file() and (ddp_run["out"] / "tokenizer.json").is_file()
    # rank 0 alone reports: sftlib's own log lines and the final line appear once, not once per rank
    assert ddp_run["output"].count("done: 2 steps") == 1
    assert ddp_run["output"].count("dataset format:") == 1


@pytest.mark.slow
def test_rank_one_has_exited_before_rank_zero_starts_the_merge(ddp_run):
    """The merge runs after the collective: no rank waits on a barrier while rank 0 merges."""
    stamps = {p.stem: json.loads(p.read_text()) for p in ddp_run["stamps"].glob("*.json")}
    assert set(stamps) == {"exit-rank-0", "exit-rank-1", "merge-start"}
    start, rank1, rank0 = stamps["merge-start"], stamps["exit-rank-1"], stamps["exit-rank-0"]
    assert start["pid"] == rank0["pid"] != rank1["pid"]  # rank 0 merged, once
    assert rank1["time"] < start["time"] < rank0["time"]
    assert start["exited_ranks"] == 1 and start["running"] == []  # rank 1's process was gone, not only done
    check = run_info(ddp_run["out"])["merge"]  # and the merge ran, was checked and recorded
    assert check["max_logit_difference"] <= check["tolerance"]


@pytest.mark.slow
def test_two_ranks_of_four_train_the_same_weights_as_one_process_with_batches_of_eight(ddp_run, tmp_path):
    from safetensors.torch import load_file

    cfg = load_config(ROOT / "configs/tiny.yaml", one_epoch(ddp_run["data"], tmp_path / "single8", batch=8))
    single = train(cfg)
    assert single["global_step"] == run_info(ddp_run["out"])["global_step"]
    ddp = load_file(ddp_run["out"] / "lora_weights" / "adapter_model.safetensors")
    one = load_file(cfg.output_dir / "lora_weights" / "adapter_model.safetensors")
    assert ddp.keys() == one.keys()
    for name in ddp:  # the same examples per step, gradients averaged over ranks: the same update
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_notebook_launcher_runs_two_processes_and_writes_the_same_artifacts_as_accelerate_launch(
    ddp_run, tmp_path
):
    # A fresh interpreter, as a notebook kernel is: accelerate.notebook_launcher forks it.
    out = tmp_path / "notebook"
    code = (
        "import sys, json; from sftlib.training.launch import launch; "
        "launch(sys.argv[1], json.loads(sys.argv[2]), num_processes=2)"
    )
    overrides = json.dumps(one_epoch(ddp_run["data"], out, pass_tokens=1))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "configs/tiny.yaml"), overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    info, cli = run_info(out), run_info(ddp_run["out"])

    assert info["world_size"] == 2 and info["distributed_type"] == "MULTI_CPU"
    assert info["global_step"] == cli["global_step"]
    assert info["rank_param_fingerprints"] == cli["rank_param_fingerprints"]
    for artifact in ("model.safetensors", "lora_weights/adapter_model.safetensors", "tokenizer.json"):
        assert (out / artifact).read_bytes() == (ddp_run["out"] / artifact).read_bytes(), artifact


# --------------------------------------------------------------------------- launches that are not one run


def test_accelerate_launch_cpu_with_two_processes_is_refused(monkeypatch):
    # `accelerate launch --cpu --num_processes 2` starts ONE process (with MASTER_ADDR set, no WORLD_SIZE)
    # unless given an MPI hostfile: it would train alone while the user expects two.
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    for name in distributed._WORLD_SIZE_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SftlibError, match="--cpu.*single process"):
        distributed.distributed_state(use_cpu=True)


def test_fsdp_requested_on_cpu_is_refused_instead_of_silently_running_ddp(monkeypatch):
    # accelerate turns ACCELERATE_USE_FSDP into FSDP only for GPU-like backends; on MULTI_CPU it is ignored.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(SftlibError, match="asks for FSDP"):
        distributed.distributed_state(use_cpu=True)


@pytest.mark.parametrize(
    "env",
    [
        {"ACCELERATE_USE_FSDP": "true"},
        {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
    ],
    ids=["fsdp", "zero3"],
)
def test_qlora_with_sharded_weights_is_refused_but_qlora_with_ddp_or_zero2_is_not(monkeypatch, env):
    qlora = load_config(ROOT / "configs/qlora_train_config.yaml").model
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SftlibError, match="QLoRA"):
        distributed.check_supported(qlora)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    distributed.check_supported(qlora)


def test_ranks_with_different_parameters_stop_the_run(monkeypatch):
    import accelerate.utils

    model = torch.nn.Linear(3, 2)
    mine = distributed.param_fingerprint(model)
    other = [mine[0], mine[1] * (1 + 1e-3)]
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda objs: [mine, other])
    with pytest.raises(SftlibError, match="rank 1 holds different parameters"):
        distributed.check_ranks_agree(model)
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda objs: [mine, list(mine)])
    assert distributed.check_ranks_agree(model) == [mine, mine]


def test_param_fingerprint_covers_only_trainable_weights_and_sees_a_single_change():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    before = distributed.param_fingerprint(model)
    with torch.no_grad():
        model[0].weight[0, 0] += 1.0  # frozen: not part of the fingerprint
    assert distributed.param_fingerprint(model) == before
    with torch.no_grad():
        model[1].weight[1, 3] += 1e-4
    assert distributed.param_fingerprint(model) != before


def test_notebook_launch_command_is_the_cli_command():
    cmd = launch.launch_command("configs/tiny.yaml", ["training.max_steps=3"], 2, port=12345, overwrite=True)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert (
        cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("--main_process_port") + 1] == "12345"
    )
    tail = cmd[cmd.index("-m", 3) :]
    assert tail == [
        "-m",
        "sftlib",
        "train",
        "--config",
        "configs/tiny.yaml",
        "--set",
        "training.max_steps=3",
        "--overwrite",
    ]
    with_config = launch.launch_command(None, [], 4, accelerate_config="configs/accelerate/fsdp.yaml")
    assert (
        with_config[3:5] == ["--config_file", "configs/accelerate/fsdp.yaml"]
        and "--multi_gpu" not in with_config
    )


# --------------------------------------------------------------------------- configs/accelerate/


def launch_args(config_file: Path, *extra: str):
    """What `accelerate launch --config_file F` makes of the file: its own parser and validation."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parsed = launch_command_parser().parse_args(
        ["--config_file", str(config_file), *extra, "-m", "sftlib", "train"]
    )
    args, defaults, _ = _validate_launch_command(parsed)
    return args, defaults


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_every_accelerate_config_loads_and_names_only_known_launch_options(path):
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # refuses unknown top-level keys
    assert config.compute_environment.value == "LOCAL_MACHINE"
    assert config.mixed_precision in ("no", None)  # precision comes from the run config's bf16/fp16
    raw = yaml.safe_load(path.read_text())
    args, _ = launch_args(path)
    for section in ("fsdp_config", "deepspeed_config"):
        for key in raw.get(section, {}):  # nested keys are not checked by accelerate itself
            assert hasattr(args, key), f"{path.name}: {section}.{key} is no `accelerate launch` option"


def test_accelerate_configs_cover_ddp_fsdp_deepspeed_and_several_machines():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {p.stem: load_config_from_file(str(p)) for p in ACCELERATE_CONFIGS}
    assert {"ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "multi_node"} <= kinds.keys()
    assert kinds["ddp"].distributed_type.value == "MULTI_GPU"
    assert kinds["deepspeed_zero2"].deepspeed_config["zero_stage"] == 2
    assert kinds["deepspeed_zero3"].deepspeed_config["zero_stage"] == 3
    node = kinds["multi_node"]
    assert node.num_machines > 1 and node.main_process_ip and node.main_process_port
    assert node.num_processes % node.num_machines == 0


def test_fsdp_config_builds_an_fsdp2_full_shard_plugin_wrapping_each_llama_decoder_layer():
    from accelerate.utils import FullyShardedDataParallelPlugin, patch_environment
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers import AutoModelForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from sftlib.models import embedded

    args, _ = launch_args(
        ROOT / "configs/accelerate/fsdp.yaml", "--main_process_port", str(launch.free_port())
    )
    assert args.use_fsdp
    env = {
        k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))
    }
    with patch_environment(**env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # full shard
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # final weights saved as ordinary safetensors
    assert plugin.cpu_ram_efficient_loading is True
    model = AutoModelForCausalLM.from_pretrained(embedded.resolve("embedded:tiny-random-llama"))
    plugin.set_auto_wrap_policy(model)
    assert plugin.auto_wrap_policy.keywords["transformer_layer_cls"] == {LlamaDecoderLayer}


def test_deepspeed_configs_build_their_plugin_where_deepspeed_is_installed():
    pytest.importorskip("deepspeed", reason="DeepSpeed is not a sftlib dependency (docs/scaling.md)")
    from accelerate.utils import DeepSpeedPlugin

    for name, stage in (("deepspeed_zero2", 2), ("deepspeed_zero3", 3)):
        args, defaults = launch_args(ROOT / f"configs/accelerate/{name}.yaml")
        assert DeepSpeedPlugin(zero_stage=defaults.deepspeed_config["zero_stage"]).zero_stage == stage


def test_gpu_check_script_is_executable_bash_that_parses():
    script = ROOT / "tests/gpu/check.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0

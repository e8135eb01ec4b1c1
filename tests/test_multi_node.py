"""Multi-node training, proven on one machine: two "machines" on loopback, and the Slurm script.

The slow test starts two `accelerate launch --config_file configs/accelerate/multi_node.yaml` processes,
one per machine rank, meeting at 127.0.0.1 (one CPU process each, over gloo, as ddp.yaml does on a
machine without a GPU). The fast ones run configs/slurm/multi_node.sbatch with `srun`, `scontrol` and
`accelerate` replaced by stubs, and check it launches that same command on every node.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sftlib.training import launch

ROOT = Path(__file__).resolve().parents[1]
MULTI_NODE = "configs/accelerate/multi_node.yaml"
SBATCH = ROOT / "configs/slurm/multi_node.sbatch"


def launch_args(rank: int, main_ip: str, port: int, machines: int, processes: int) -> list[str]:
    """The `accelerate launch` options docs/scaling.md gives for machine `rank`."""
    return [
        "--config_file", MULTI_NODE, "--num_machines", str(machines), "--num_processes", str(processes),
        "--machine_rank", str(rank), "--main_process_ip", main_ip, "--main_process_port", str(port),
    ]  # fmt: skip


# --------------------------------------------------------------------------- two machines on loopback


@pytest.mark.slow
def test_two_machines_on_loopback_train_one_model_with_world_size_two(tmp_path):
    out, port = tmp_path / "out", launch.free_port()
    train = ["-m", "sftlib", "train", "--config", "configs/tiny.yaml"]
    train += ["--set", f"training.output_dir={out}", "--set", "training.max_steps=2"]
    machines = [
        subprocess.Popen(
            [sys.executable, "-m", "accelerate.commands.launch", *launch_args(rank, "127.0.0.1", port, 2, 2)]
            + train,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    try:
        outputs = [m.communicate(timeout=300)[0] for m in machines]
    finally:
        for m in machines:  # a machine left waiting for its peer would wait for the rendezvous timeout
            if m.poll() is None:
                m.kill()
    for rank, (m, output) in enumerate(zip(machines, outputs, strict=True)):
        assert m.returncode == 0, f"machine {rank}:\n{output[-3000:]}"

    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["distributed_type"] == "MULTI_CPU"
    assert info["global_step"] == 2
    fingerprints = info["rank_param_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]  # one model across the machines
    # the global main process (machine 0) alone reports and writes
    assert "done: 2 steps" in outputs[0] and "done:" not in outputs[1]


# --------------------------------------------------------------------------- the Slurm batch script


def stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


def run_sbatch(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The batch script as Slurm would run it, with stubs: `scontrol show hostnames` names two hosts (the
    second after a pause, as a long node list would: a reader that stops after one line breaks the pipe),
    `srun` runs its command once per node with that node's SLURM_NODEID/SLURM_PROCID, and `accelerate`
    prints its arguments as one JSON line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub(
        bin_dir,
        "scontrol",
        'echo "scontrol $*" >&2\n[ "$1 $2 $3" = "show hostnames gpu-[07-08]" ] && echo gpu-07 && sleep 0.2 && echo gpu-08',
    )
    stub(
        bin_dir,
        "srun",
        'echo "srun $*" >&2\nwhile [[ "$1" == --* ]]; do shift; done\n'
        'for ((node = 0; node < SLURM_NNODES; node++)); do SLURM_NODEID=$node SLURM_PROCID=$node "$@"; done',
    )
    stub(
        bin_dir,
        "accelerate",
        f'exec {sys.executable} -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@"',
    )
    environ = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu-[07-08]",
        "SLURM_NNODES": "2",
        **env,
    }
    return subprocess.run(["bash", str(SBATCH), *args], cwd=ROOT, env=environ, capture_output=True, text=True)


def test_slurm_script_is_executable_bash_that_parses():
    assert os.access(SBATCH, os.X_OK)
    assert subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True).returncode == 0


def test_slurm_script_launches_the_readme_command_once_per_node_with_its_own_machine_rank(tmp_path):
    extra = ["--set", "training.max_steps=3", "--set", "dataset.name=my data/rows.jsonl"]
    proc = run_sbatch(tmp_path, "configs/tiny.yaml", *extra, SLURM_GPUS_ON_NODE="4")
    assert proc.returncode == 0, proc.stderr
    launched = [json.loads(line) for line in proc.stdout.splitlines()]
    train = ["-m", "sftlib", "train", "--config", "configs/tiny.yaml", *extra]
    assert launched == [["launch", *launch_args(rank, "gpu-07", 29500, 2, 8), *train] for rank in (0, 1)]
    assert "scontrol show hostnames gpu-[07-08]" in proc.stderr


def test_slurm_script_takes_the_port_and_the_gpu_count_from_the_environment(tmp_path):
    proc = run_sbatch(tmp_path, "configs/tiny.yaml", GPUS_PER_NODE="2", MAIN_PROCESS_PORT="31000")
    assert proc.returncode == 0, proc.stderr
    launched = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [cmd[1:-5] for cmd in launched] == [launch_args(rank, "gpu-07", 31000, 2, 4) for rank in (0, 1)]


def test_slurm_script_without_a_config_or_a_gpu_count_stops_with_a_usage_line(tmp_path):
    no_config = run_sbatch(tmp_path, SLURM_GPUS_ON_NODE="4")
    assert (
        no_config.returncode != 0
        and "usage: sbatch configs/slurm/multi_node.sbatch CONFIG" in no_config.stderr
    )
    no_gpus = run_sbatch(tmp_path, "configs/tiny.yaml")
    assert no_gpus.returncode != 0 and "set GPUS_PER_NODE" in no_gpus.stderr
    assert not no_config.stdout and not no_gpus.stdout  # nothing launched

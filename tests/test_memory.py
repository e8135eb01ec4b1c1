"""Under load: a long run's memory does not grow step over step."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sftlib import cli

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    """This process's resident memory now (not its peak), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_rss_at_step_200_is_within_10_percent_of_rss_at_step_20(tmp_path, monkeypatch, capsys):
    import trl
    from transformers import TrainerCallback

    rss: dict[int, float] = {}

    class RecordRss(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            rss[state.global_step] = rss_mib()

    original_train = trl.SFTTrainer.train

    def train(self, *args, **kwargs):
        self.add_callback(RecordRss())
        return original_train(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "train", train)

    data = tmp_path / "chat.jsonl"
    with data.open("w") as f:
        for i in range(64):
            msgs = [{"role": "user", "content": f"{i} + 1?"}, {"role": "assistant", "content": str(i + 1)}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    raw = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    raw["model"]["max_seq_length"] = 64
    raw["dataset"].update(name=str(data), eval_split=None, max_samples=None)
    raw["training"].update(
        output_dir=str(tmp_path / "out"),
        max_steps=200,
        per_device_train_batch_size=1,
        logging_steps=10,
        save_strategy="steps",
        save_steps=50,  # checkpoints on the way: saving must not leak either
        save_total_limit=2,
        disable_tqdm=True,
    )
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a few busy cores, one thread is several times faster per step
    try:
        assert cli.main(["train", "--config", str(config)]) == 0
    finally:
        torch.set_num_threads(threads)

    growth = rss[200] / rss[20] - 1
    print(
        f"RSS step 20: {rss[20]:.1f} MiB, step 100: {rss[100]:.1f} MiB, step 200: {rss[200]:.1f} MiB ({growth:+.1%})"
    )
    assert abs(growth) < 0.10

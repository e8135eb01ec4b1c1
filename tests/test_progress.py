"""Progress lines on long work: a line per tenth of the work, the pipeline passing exactly those on."""

import re

from sftlib import progress
from sftlib.suite import pipeline


def test_a_line_for_the_first_item_each_tenth_and_the_end(capsys):
    lines = progress.Lines("train", 40, "steps")
    for step in range(1, 41):
        lines.update(step, f"loss {1 / step:.3f}")
    printed = capsys.readouterr().err.splitlines()  # not in a kernel: stderr
    steps = [int(re.match(r"  \[train\] (\d+)/40 steps", line).group(1)) for line in printed]
    assert steps == [1, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert all(progress.is_progress(line) and " left" in line for line in printed[:-1])
    assert printed[-1].endswith(" · done") and "(100%) · loss 0.025" in printed[-1]


def test_a_resumed_run_counts_from_where_it_stood(capsys):
    lines = progress.Lines("train", 20, "steps", start=10)
    for step in range(11, 21):
        lines.update(step)
    steps = [int(re.search(r"(\d+)/20", line).group(1)) for line in capsys.readouterr().err.splitlines()]
    assert steps == [11, 12, 14, 16, 18, 20]  # the first step done here, then each tenth not yet shown


def test_the_pipeline_passes_on_whole_progress_lines_only(capsys):
    sink = pipeline._ProgressLines()
    for chunk in (
        "working directory: /x\n  [train] 4/40 st",
        "eps (10%) · 0:07 left\nloss 1.2\n",
        "  [generate base] 1/1 prompts",
    ):
        sink.write(chunk)
    sink.write(" (100%) · done\n")
    assert capsys.readouterr().err.splitlines() == [
        "  [train] 4/40 steps (10%) · 0:07 left",
        "  [generate base] 1/1 prompts (100%) · done",
    ]


def test_in_a_kernel_lines_go_to_stdout_for_the_cell_and_the_pipeline(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ipykernel", object())
    assert progress.stream() is sys.stdout
    monkeypatch.delitem(sys.modules, "ipykernel")
    assert progress.stream() is sys.stderr
    assert not progress.is_progress("[3/5] 03_train") and not progress.is_progress("")


def test_training_lines_show_fresh_loss_and_positive_tokens_per_second_after_a_resume(capsys, monkeypatch):
    from transformers import TrainerControl, TrainerState

    clock = iter(range(100, 200))
    monkeypatch.setattr(progress.time, "perf_counter", lambda: float(next(clock)))
    # resumed at step 10 of 20: the checkpoint's log history counted 5000 tokens; TRL counts again from 0
    state = TrainerState(
        max_steps=20, global_step=10, log_history=[{"step": 10, "loss": 2.0, "num_tokens": 5000}]
    )
    callback = progress.training_lines()
    callback.on_train_begin(None, state, TrainerControl())
    for step in range(11, 21):
        state.global_step = step
        control = TrainerControl(should_log=step % 2 == 0)
        callback.on_step_end(None, state, control)
        if control.should_log:  # the Trainer logs after on_step_end: the line waits for this loss
            state.log_history.append({"step": step, "loss": 1 / step, "num_tokens": 100 * (step - 10)})
            callback.on_log(None, state, control, logs=state.log_history[-1])
    printed = capsys.readouterr().err.splitlines()
    assert printed[0] == "  [train] 10 optimizer steps to run"
    assert [line.split()[1] for line in printed[1:]] == ["11/20", "12/20", "14/20", "16/20", "18/20", "20/20"]
    assert "loss 0.08333" in printed[2] and "loss 0.05 " in printed[-1]  # each step's own loss, once logged
    rates = [int(re.search(r"(-?\d+) tokens/s", line).group(1)) for line in printed[2:]]
    assert all(rate > 0 for rate in rates)

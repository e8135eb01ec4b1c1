"""No dead code in sftlib: every function, class, method and attribute is used by sftlib or a notebook.

vulture (at 60% confidence, which covers unused functions) scans sftlib with the notebooks' code as
callers; tests are not callers, so code only a test reaches counts as dead. Hooks that a framework
calls by name (Trainer callbacks, argparse's error) are listed in HOOKS, each with who calls it, and so
is the one tool that regenerates committed files.
"""

from pathlib import Path

import nbformat
import vulture

ROOT = Path(__file__).resolve().parents[1]
HOOKS = """
_.on_step_begin, _.on_step_end, _.on_epoch_end, _.on_save, _.on_train_begin, _.on_log  # transformers.TrainerCallback: the Trainer calls them
_.should_training_stop  # transformers.TrainerControl: read by the Trainer
_.error  # argparse.ArgumentParser.error: argparse calls it on a usage error
frame  # signal handlers take (signum, frame)
_.use_cache  # transformers' model.config.use_cache, read by the model
_.disabled  # ipywidgets' Button.disabled, read by the browser (the chat's Send button while it answers)
TOOLS  # named by notebook 05's TOOLS parameter (sftlib.lessons.tool_task:TOOLS), imported by evaluate.load_tools
write_demo_dataset  # writes configs/data/*; tests/test_demo.py checks the committed files are its output
"""


def test_nothing_in_sftlib_is_unused():
    scanner = vulture.Vulture()
    for path in sorted((ROOT / "sftlib").rglob("*.py")):
        scanner.scan(path.read_text(), filename=str(path))
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        scanner.scan("\n".join(c.source for c in cells if c.cell_type == "code"), filename=str(path))
    scanner.scan(HOOKS, filename="hooks")
    unused = [
        f"{item.filename}:{item.first_lineno}: {item.message}"
        for item in scanner.get_unused_code(min_confidence=60)
        if str(item.filename).startswith(str(ROOT / "sftlib"))
    ]
    assert unused == [], "\n".join(unused)

"""The cache key of labels: the source of every sftlib module on the path from a row to its labels.

datasets fingerprints a `Dataset.map` by its function's name and its arguments (the tokenizer with
its chat template, the stop tokens, `train_on`, the template arguments), not by the code the function
calls. So `code_version()`, a hash of the modules that `sftlib.dataset` imports, directly or through
other sftlib modules (found by reading their imports, not from a list kept by hand), is passed to
every map of the data path: an edit to any of them computes the labels anew.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).parent
ENTRY = "dataset"  # sftlib.dataset.prepare: rows in, labels out


def imported_modules(path: Path, package: str = "sftlib") -> set[str]:
    """Names of the `package` modules that the file imports, anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == package:
                found.update(alias.name for alias in node.names)
            elif node.module.startswith(package + "."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith(package + "."))
    return found


def dependencies(root: Path = PACKAGE, entry: str = ENTRY) -> list[Path]:
    """The files of `entry` and of every module it reaches through imports, sorted."""
    seen, todo = set(), [entry]
    while todo:
        name = todo.pop()
        path = root / f"{name}.py"
        if name in seen or not path.is_file():  # a subpackage or a name that is not a module
            continue
        seen.add(name)
        todo.extend(imported_modules(path))
    return sorted(root / f"{name}.py" for name in seen)


def version(root: Path = PACKAGE, entry: str = ENTRY) -> str:
    digest = hashlib.sha256()
    for path in dependencies(root, entry):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@functools.cache
def code_version() -> str:
    """`version()` of the installed package, computed once per process."""
    return version()

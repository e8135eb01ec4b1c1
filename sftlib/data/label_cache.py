"""The cache key of labels: the source of every sftlib module on the path from a row to its labels.

datasets fingerprints a `Dataset.map` by its function's name and its arguments (the tokenizer with
its chat template, the stop tokens, `train_on`, the template arguments), not by the code the function
calls. So `code_version()`, a hash of the modules that `sftlib.data.dataset` imports, directly or through
other sftlib modules, in any sub-package and at any depth (found by reading their imports, not from a
list kept by hand), with the `__init__.py` of every package they sit in, and of the releases of the
libraries that render and tokenize (transformers, tokenizers, jinja2, TRL), is passed to every map of the
data path: an edit to any of them, or an upgrade of one of those libraries, computes the labels anew.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # the folder of `sftlib`
ENTRY = "sftlib.data.dataset"  # prepare: rows in, labels out
# The libraries whose code decides the labels too: the template renderer, the tokenizer, TRL's labels.
KEYED_LIBRARIES = ("transformers", "tokenizers", "jinja2", "trl")


def module_file(name: str, root: Path = PACKAGE) -> Path | None:
    """The file of module `name` (`sftlib.a.b`) under `root` (the `sftlib` folder): `a/b.py`, or
    `a/b/__init__.py` for a package; None where there is no such module."""
    parts = name.split(".")[1:]
    if not parts:
        return root / "__init__.py"
    as_module, as_package = root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")
    return as_module if as_module.is_file() else as_package if as_package.is_file() else None


def imported_modules(path: Path, package: str = "sftlib") -> set[str]:
    """The dotted names `package`'s modules the file imports, anywhere in it (function-level imports too).
    `from sftlib.a import b` names both `sftlib.a.b` (when b is a module) and `sftlib.a`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == package or node.module.startswith(package + "."):
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(package + "."))
    return found


def dependencies(root: Path = PACKAGE, entry: str = ENTRY) -> list[Path]:
    """The files of `entry` and of every module it reaches through imports, and the `__init__.py` of
    each package on the way (importing a module runs them), sorted."""
    seen, files, todo = set(), set(), [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name, root)
        if path is None:  # a name imported from a module, not a module
            continue
        files.add(path)
        todo.extend(imported_modules(path))
        parts = name.split(".")
        todo.extend(".".join(parts[:k]) for k in range(2, len(parts)))  # its packages' __init__.py
    return sorted(files)


def version(root: Path = PACKAGE, entry: str = ENTRY) -> str:
    digest = hashlib.sha256()
    for path in dependencies(root, entry):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def library_versions() -> dict[str, str | None]:
    """The installed release of each of KEYED_LIBRARIES (None where one is not installed)."""
    out = {}
    for name in KEYED_LIBRARIES:
        try:
            out[name] = installed(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def code_version() -> str:
    """The installed package's `version()` and the KEYED_LIBRARIES' releases, hashed; once per process."""
    keyed = json.dumps([version(), library_versions()], sort_keys=True)
    return hashlib.sha256(keyed.encode()).hexdigest()[:16]

"""Files and folders written whole or not at all: a reader sees the old one or the new one, never a part.

Each write goes to a temporary name beside its target (the same file system), is flushed to disk, then
takes the target's name with `os.replace`, which is atomic. A crash or a full disk in between leaves the
target as it was and the temporary removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def write_atomically(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` through a temporary file beside it; return `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode("utf-8") if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def move_files_into(folder: str | Path, target: str | Path) -> list[Path]:
    """Move every file of `folder` into `target` (each appears whole, by `os.replace`), then remove
    `folder`; return the moved files' new paths. Both lie on one file system."""
    folder, target = Path(folder), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    moved = []
    for item in sorted(folder.iterdir()):
        os.replace(item, target / item.name)
        moved.append(target / item.name)
    folder.rmdir()
    return moved


def publish_folder(folder: str | Path, target: str | Path) -> Path:
    """Give the finished `folder` the name `target` in one step. Where `target` exists already (another
    process published it first), that one is kept and `folder` removed."""
    folder, target = Path(folder), Path(target)
    try:
        if target.exists():
            shutil.rmtree(folder)
        else:
            os.replace(folder, target)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return target

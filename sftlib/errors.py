"""Errors a user sees: `SftlibError` (what is wrong, and how to fix it), and the evidence of any other.

An SftlibError is one `error: ... Fix: ...` line. Any other exception (out of memory, NCCL, a shape
error deep in a library) is one line too, but its full traceback is kept in a file the line names
(`save_traceback`): output_dir/error.log, or a temporary file before output_dir exists.
"""


class SftlibError(Exception):
    """A problem with the user's input. The CLI prints it as a single `error: ...` line.

    The message names the problem; `fix` (optional) says what to do about it.
    """

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(f"{message} Fix: {fix}" if fix else message)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def describe_os_error(exc: BaseException) -> SftlibError | None:
    """A clear message for the file-system errors any command can meet, or None for other errors.

    A full disk is recognised through the exception's causes too (libraries re-raise it as their
    own error); the other cases only when `exc` itself is the OSError.
    """
    import errno

    seen = exc
    while seen is not None and getattr(seen, "errno", None) not in (errno.ENOSPC, errno.EDQUOT):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        seen = exc
    code = getattr(seen, "errno", None) if isinstance(seen, OSError) else None
    if code is None and "No space left on device" in str(exc):
        code = errno.ENOSPC
    if code is None:
        return None
    where = f" ({seen.filename})" if getattr(seen, "filename", None) else ""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return SftlibError(
            f"the disk is full: no space left on device while writing{where}.",
            "free disk space (delete old runs or checkpoints; training.save_total_limit keeps fewer) or set "
            "training.output_dir on a disk with room, then run the command again (a training run continues "
            "from its newest checkpoint with `sftlib train ... --resume`, `sftlib pipeline ... --resume` or "
            "`sftlib demo ... --resume`).",
        )
    if code in (errno.EACCES, errno.EPERM):
        return SftlibError(
            f"permission denied{where}.", "choose a path you can write to, or fix its permissions."
        )
    if code == errno.EROFS:
        return SftlibError(f"read-only file system{where}.", "choose a path on a writable disk.")
    if code == errno.ENOTDIR or (code == errno.EEXIST and _is_file(getattr(seen, "filename", None))):
        return SftlibError(
            f"a part of the path{where} is a file, not a folder.",
            "choose a path whose parent folders are all folders (training.output_dir, or the output path you gave).",
        )
    if code == errno.ENOENT:
        return SftlibError(f"no such file or folder{where}.", "check the path, and create its parent folder.")
    return None


def _is_file(path) -> bool:
    import os

    return bool(path) and os.path.isfile(path)


ERROR_LOG = "error.log"


def save_traceback(exc: BaseException, output_dir=None):
    """Write `exc`'s full traceback to `output_dir`/error.log (error-rank-N.log on rank N > 0), or to a
    new temporary file when `output_dir` is None or does not exist yet; returns the file's path."""
    import os
    import tempfile
    import traceback
    from pathlib import Path

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    rank = os.environ.get("RANK", "0")
    name = ERROR_LOG if rank == "0" else f"error-rank-{rank}.log"
    if output_dir is not None and Path(output_dir).is_dir():
        path = Path(output_dir) / name
        path.write_text(text, encoding="utf-8")
        return path
    fd, tmp = tempfile.mkstemp(prefix="sftlib-", suffix=f"-{name}")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(tmp)

"""Every error sftlib raises, and every reason a row is dropped, in one place.

- `SftlibError`: a problem with the user's input, one `error: ... Fix: ...` line; `Interrupted` and
  `Diverged` end a training run early.
- `DropExample` and `DROP_REASONS`: a row that can't be trained, counted under one reason.
- `BadToolCall`: a tool call that can't be read or run (in data, or written by a model).
- `WorkerTraceback`: a training worker's traceback, carried to the process that reports it.

Any other exception (out of memory, NCCL, a shape error deep in a library) is one line too, but its full
traceback is kept in a file the line names (`save_traceback`): output_dir/error.log, or a temporary file
before output_dir exists.
"""


class SftlibError(Exception):
    """A problem with the user's input. The CLI prints it as a single `error: ...` line.

    The message names the problem; `fix` (optional) says what to do about it.
    """

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(f"{message} Fix: {fix}" if fix else message)


class Interrupted(SftlibError):
    """Training stopped on a signal; `exit_code` is 128 + the signal number, as a shell reports it."""

    def __init__(self, message: str, fix: str | None, signum: int):
        super().__init__(message, fix)
        self.exit_code = 128 + int(signum)


class Diverged(SftlibError):
    """The training loss became NaN or inf at `step`."""

    def __init__(self, message: str, fix: str | None, step: int):
        super().__init__(message, fix)
        self.step = step


# Every way an example can be dropped. Nothing is dropped without one of these in the report.
DROP_REASONS = {
    "empty_text": "text is empty or whitespace",
    "empty_completion": "the completion is empty, or has no assistant turn",
    "empty_conversation": "no messages",
    "empty_assistant_turn": "an assistant turn is empty or whitespace and calls no tool",
    "non_string_content": "a prompt, completion, text or message content is neither a string nor a list of text "
    "parts (null, a number, a part without its text)",
    "non_text_part": "a message holds a content part that is not text (an image, audio): sftlib trains text-only models",
    "bad_train_flag": "a message's `weight` is not 0 or 1, its `train` not true or false, or a prompt message is "
    "marked to train",
    "all_turns_held_back": "the data marks every assistant turn not to train (weight 0, train false)",
    "unknown_role": "a role other than system/user/assistant/tool/ipython/function (ShareGPT: system/human/gpt/"
    "function_call/observation)",
    "bad_tool_call": "a tool call without a function name, or with arguments that are not a JSON object",
    "misplaced_system": "a system message that is not the first message",
    "repeated_role": "two consecutive messages with the same role (other than tool results)",
    "no_assistant_turn": "no assistant turn (after trimming leading assistant and trailing user turns)",
    "template_error": "the chat template raised an error on this row (e.g. a system message it does not support)",
    "history_changes": "the template renders the turn's own history differently once it is answered",
    "no_stop_token": "an assistant turn is not followed by any of the model's stop tokens",
    "not_rendered": "the chat template leaves out a field of the row (reasoning, tool calls, tool results, tools)",
    "audit_failed": "the mask audit could not confirm the row's labels (a masking bug if it is more than a few rows)",
    "all_trained_tokens_truncated": "max_seq_length cuts off every trained token",
}


class DropExample(Exception):
    """An example that can't be trained on; `reason` is a key of DROP_REASONS, `detail` says where."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in DROP_REASONS, reason
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class BadToolCall(ValueError):
    """A tool call that can't be read (its shape, its arguments) or run (an unknown tool, arguments the
    tool does not take): in a row, a counted drop; written by a model, a miss in the tool loop."""


class WorkerTraceback(Exception):
    """The traceback of the worker that failed, as text (what --debug shows under the error)."""


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

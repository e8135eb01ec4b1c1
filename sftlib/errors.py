"""The one exception type a user should see: what is wrong, and how to fix it."""


class SftlibError(Exception):
    """A problem with the user's input. The CLI prints it as a single `error: ...` line.

    The message names the problem; `fix` (optional) says what to do about it.
    """

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(f"{message} Fix: {fix}" if fix else message)

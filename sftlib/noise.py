"""Messages from other libraries that are harmless here, filtered by their exact origin and cause.

Each filter drops one message from one logger, in the one situation where it says nothing a user can
act on; the same message for any other cause still shows. Fixes at the source live where the source
is: the kernels' transport and the HTML alt text in sftlib.suite.pipeline.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_HUB_KERNEL_FAILED = "Failed to load CPU gemm_4bit_forward from kernels-community"


class OptionalHubKernelNotInstalled(logging.Filter):
    """bitsandbytes (0.50) on a CPU with AVX512-BF16 tries, when it is imported, to fetch a faster
    4-bit matmul from the Hugging Face hub through the optional `kernels` package, and warns when that
    package is not installed. It then uses the 4-bit kernels in its own wheel: same results
    (tests/test_qlora.py trains, merges and generates with them), nothing to fix. Only that cause is
    dropped; with `kernels` installed, a failure to load (no network, wrong version) still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        cause = record.args[0] if isinstance(record.args, tuple) and record.args else None
        not_installed = isinstance(cause, ModuleNotFoundError) and cause.name == "kernels"
        return not (str(record.msg).startswith(BNB_HUB_KERNEL_FAILED) and not_installed)


def filter_harmless_messages() -> None:
    """Install the filters (once); they must be in place before the library logs, i.e. before it is
    imported (peft imports bitsandbytes)."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, OptionalHubKernelNotInstalled) for f in logger.filters):
        logger.addFilter(OptionalHubKernelNotInstalled())


DEPRECATED_PROPERTY = r"`is_gradient_checkpointing` is deprecated"


@contextlib.contextmanager
def library_deprecations():
    """peft 0.21 (PeftModel.__init__) and trl 1.16 (models/utils.py) read a property that transformers
    5.23 deprecated; the FutureWarning is theirs to fix and says nothing to a user. Only that warning,
    only around sftlib's own calls into them: the same warning from a user's code still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DEPRECATED_PROPERTY, category=FutureWarning)
        yield

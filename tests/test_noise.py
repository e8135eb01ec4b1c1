"""Harmless library messages are filtered by exact origin and cause; the same message for a real problem shows."""

import logging
import subprocess
import sys

import pytest

from sftlib import noise


def bnb_warning(cause: Exception) -> logging.LogRecord:
    """The record bitsandbytes 0.50 logs (backends/cpu/ops.py) when its optional hub kernel does not load."""
    return logging.LogRecord(
        noise.BNB_CPU_LOGGER,
        logging.WARNING,
        "ops.py",
        253,
        noise.BNB_HUB_KERNEL_FAILED + ": %s. Please make sure you already `pip install kernels`",
        (cause,),
        None,
    )


def test_the_optional_hub_kernel_not_being_installed_is_dropped():
    missing = ModuleNotFoundError("No module named 'kernels'", name="kernels")
    assert noise.OptionalHubKernelNotInstalled().filter(bnb_warning(missing)) is False


@pytest.mark.parametrize(
    "cause",
    [
        OSError("We couldn't connect to 'https://huggingface.co'"),  # `kernels` installed, hub unreachable
        ModuleNotFoundError("No module named 'torch._C'", name="torch._C"),  # a broken install
    ],
    ids=["no-network", "other-module"],
)
def test_the_same_warning_for_any_other_cause_still_shows(cause):
    assert noise.OptionalHubKernelNotInstalled().filter(bnb_warning(cause)) is True


def test_other_messages_of_that_logger_still_show():
    record = logging.LogRecord(noise.BNB_CPU_LOGGER, logging.WARNING, "ops.py", 1, "something else", (), None)
    assert noise.OptionalHubKernelNotInstalled().filter(record) is True


def test_installing_the_filters_twice_adds_them_once():
    noise.filter_harmless_messages()
    noise.filter_harmless_messages()
    filters = logging.getLogger(noise.BNB_CPU_LOGGER).filters
    assert sum(isinstance(f, noise.OptionalHubKernelNotInstalled) for f in filters) == 1


def test_importing_sftlib_then_peft_prints_no_bitsandbytes_hub_kernel_warning():
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("bitsandbytes tries its hub kernel only on CPUs with AVX512-BF16")
    code = "import sftlib, peft"
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    loud = subprocess.run([sys.executable, "-c", "import peft"], capture_output=True, text=True)
    assert quiet.returncode == 0 and noise.BNB_HUB_KERNEL_FAILED not in quiet.stderr
    assert noise.BNB_HUB_KERNEL_FAILED in loud.stderr  # without sftlib's filter bitsandbytes does warn here

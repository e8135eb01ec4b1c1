"""The kernels the pipeline runs notebooks on: this interpreter's kernelspec, headless rendering, local
sockets, and Ctrl-C passed on to the kernel to stop at a safe point."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "sftlib-python"


def transport():
    """Kernel configuration: talk to the kernels over local (IPC) sockets.

    Over TCP every kernel warns that its traffic is unencrypted; IPC sockets are files in the Jupyter
    runtime folder, readable by this user only, so there is nothing to warn about.
    """
    from traitlets.config import Config

    return Config({"KernelManager": {"transport": "ipc"}})


class InterruptsReachTheKernel:
    """Ctrl-C, passed on to the running kernel: jupyter_client starts kernels in a session of their own,
    so a terminal's Ctrl-C reaches only this process. The first one is sent on to the kernel's process
    group (its training workers included): training finishes its step, saves a checkpoint and stops, and
    the notebook fails with that; `requested` tells the pipeline to start no further notebook. A second
    Ctrl-C stops this process at once."""

    def __enter__(self):
        import threading

        self.requested, self._previous = False, None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._first)
        return self

    def _first(self, signum, frame) -> None:
        import psutil

        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print(
            "interrupt: stopping at a safe point (training saves a checkpoint first); Ctrl-C again stops at once",
            file=sys.stderr,
            flush=True,
        )
        for child in psutil.Process().children():
            if "ipykernel_launcher" in " ".join(child.cmdline()):
                os.killpg(os.getpgid(child.pid), signal.SIGINT)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class kernel_spec:
    """A kernelspec for the running interpreter, found through JUPYTER_PATH for the duration.

    A `python3` kernelspec could name another Python (a user's or the system's); the notebooks must
    run on the interpreter that has this sftlib.
    """

    def __enter__(self) -> str:
        self._tmp = tempfile.TemporaryDirectory(prefix="sftlib-kernel-")
        spec_dir = Path(self._tmp.name) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python ({sys.executable})",
            "language": "python",
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        self._old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [self._tmp.name, self._old]))
        return KERNEL_NAME

    def __exit__(self, *exc) -> None:
        if self._old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = self._old
        self._tmp.cleanup()


class headless:
    """Tell the kernels (they inherit the environment) to render statically: no one moves widgets."""

    def __enter__(self):
        from sftlib.views.browser import HEADLESS_ENV

        self._name, self._old = HEADLESS_ENV, os.environ.get(HEADLESS_ENV)
        os.environ[HEADLESS_ENV] = "1"

    def __exit__(self, *exc):
        if self._old is None:
            os.environ.pop(self._name, None)
        else:
            os.environ[self._name] = self._old

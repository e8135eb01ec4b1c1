"""`sftlib train` as `accelerate launch` runs it, plus stamps the two-process merge test reads.

Each rank writes STAMPS/exit-rank-N.json ({pid, time}) when its interpreter exits; rank 0 writes
STAMPS/merge-start.json when the merge starts, with whether every other rank's process was still
running then. Run as `accelerate launch ... tests/launch_stamped.py train --config ...`.
"""

import atexit
import json
import os
import sys
import time
from pathlib import Path

from sftlib import cli
from sftlib.outputs import saving

STAMPS = Path(os.environ["SFTLIB_TEST_STAMPS"])
RANK = os.environ.get("RANK", "0")


def stamp(name: str, **fields) -> None:
    STAMPS.mkdir(parents=True, exist_ok=True)
    (STAMPS / f"{name}.json").write_text(json.dumps({"pid": os.getpid(), "time": time.time(), **fields}))


def still_running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stamped_merge(merge_run):
    def run(*args, **kwargs):
        others = [json.loads(p.read_text()) for p in STAMPS.glob("exit-rank-*.json")]
        stamp(
            "merge-start",
            exited_ranks=len(others),
            running=[o["pid"] for o in others if still_running(o["pid"])],
        )
        return merge_run(*args, **kwargs)

    return run


atexit.register(lambda: stamp(f"exit-rank-{RANK}"))
saving.merge_run = stamped_merge(saving.merge_run)

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))

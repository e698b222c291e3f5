"""`python -m tests.helpers.paused_cli ARGS`: `bitkeras ARGS`, held still after a checkpoint.

Once the run's first checkpoint is on disk it prints PAUSED and waits, so a
test can kill it at a known moment: mid-run, with a checkpoint to resume from.
"""

import sys
import threading

from bitkeras.finetuning import run_state
from bitkeras.jobs import cli

PAUSED = "paused after a checkpoint"


def _save_then_hold(save):
    def wrapped(self):
        save(self)
        print(PAUSED, flush=True)
        threading.Event().wait()
    return wrapped


if __name__ == "__main__":
    run_state.RunCheckpoint.save = _save_then_hold(run_state.RunCheckpoint.save)
    sys.exit(cli.main(sys.argv[1:]))

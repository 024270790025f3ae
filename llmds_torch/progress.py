"""Progress output for the command line: tqdm bars on stderr that never sit silent.

A long call with no progress of its own (a numba compile, reading a corpus) runs inside
``phase(...)``: a bar without a total whose elapsed time a background thread redraws every
``HEARTBEAT_SECONDS``, so the terminal (or a log reading stderr) sees a sign of life at least that
often. Disabled bars print nothing.
"""

import sys
import threading
from contextlib import contextmanager

HEARTBEAT_SECONDS = 0.5


def bar(desc: str, total: int | None = None, *, unit: str = "it", enabled: bool = True):
    """A tqdm bar on stderr, redrawn by a heartbeat thread until it is closed."""
    from tqdm import tqdm

    progress = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                    dynamic_ncols=True, mininterval=HEARTBEAT_SECONDS,
                    bar_format=None if total is not None else "{desc}: {elapsed}{postfix}")
    if enabled:
        _start_heartbeat(progress)
    return progress


def _start_heartbeat(progress) -> None:
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_SECONDS):
            progress.refresh()

    thread = threading.Thread(target=beat, name="llmds-progress", daemon=True)
    close = progress.close

    def close_and_stop():
        stop.set()
        if thread.is_alive() and thread is not threading.current_thread():
            thread.join()
        close()

    progress.close = close_and_stop
    thread.start()


@contextmanager
def phase(desc: str, *, enabled: bool = True):
    """A named step with no progress of its own; yields its bar (``set_postfix_str`` to annotate)."""
    progress = bar(desc, enabled=enabled, unit="step")
    try:
        yield progress
    finally:
        progress.close()


__all__ = ["HEARTBEAT_SECONDS", "bar", "phase"]

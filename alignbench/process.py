"""Process set-up shared by the commands and by sweep workers: logging, quiet libraries, SIGTERM,
and `interruptible` for long C calls that would otherwise hold a signal back until they return.

A leaf module (it imports nothing from alignbench), so the CLI, sweep workers and the bench can
all call it without importing each other.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading


def fail(message: str, code: int = 2):
    """One line on stderr and a non-zero exit: how every user-facing error ends."""
    print(f"alignbench: error: {message}", file=sys.stderr)
    sys.exit(code)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def interrupt_on_sigterm() -> None:
    """SIGTERM ends a run like Ctrl-C: records finalised as KILLED, nothing left RUNNING."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)


def interruptible(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` on a helper thread while the main thread waits in short slices.

    Python runs signal handlers only in the main thread between bytecodes, so a long C call there
    (HF tokenizers' BPE training: seconds to minutes, GIL released) holds SIGTERM and Ctrl-C back
    until it returns. Waiting here instead, the interrupt is raised within 0.1 s; the abandoned
    thread is a daemon and ends with the process."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=f"interruptible-{getattr(fn, '__name__', 'call')}", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def exit_interrupted(what: str, exc: BaseException, outcome: str = "") -> None:
    """One line on stderr and exit status 130 (what a shell reports for Ctrl-C) for an interrupted command."""
    how = "SIGTERM" if str(exc) == f"signal {int(signal.SIGTERM)}" else str(exc) or "Ctrl-C"
    print(f"alignbench: {what} interrupted ({how})" + (f"; {outcome}" if outcome else ""), file=sys.stderr)
    sys.exit(130)


def quiet_libraries() -> None:
    """No per-load progress bars from transformers/datasets, no MLflow store set-up chatter, in our logs."""
    import datasets
    import transformers

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.utils.logging.disable_progress_bar()

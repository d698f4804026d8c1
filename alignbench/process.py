"""Process set-up shared by the commands and by sweep workers: logging, quiet libraries, SIGTERM.

A leaf module (it imports nothing from alignbench), so the CLI, sweep workers and the bench can
all call it without importing each other.
"""

from __future__ import annotations

import logging
import signal
import sys


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


def quiet_libraries() -> None:
    """No per-load progress bars from transformers/datasets in our logs."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.utils.logging.disable_progress_bar()

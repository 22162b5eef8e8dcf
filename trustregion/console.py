"""What a run says: the project's own lines through ``logging`` (so Hydra's job log file keeps them, beside
the console), and third-party progress bars and chatter quiet unless ``verbose=true``."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator

log = logging.getLogger("trustregion")
_quiet = False  # set by quiet_third_party: whether third-party chatter is off for this process


def say(message: str) -> None:
    """One line for the user: to the console and to the run dir's log file (under Hydra, whose format names us)."""
    if logging.getLogger().handlers:
        log.info(message)
    else:  # not under Hydra (tests, scripts): the console alone
        print(f"[trustregion] {message}", flush=True)


def error_line(message: str) -> None:
    """``error: <message>`` as one line on stderr, and into the run's log file (Hydra's ``<job>.log``) where there
    is one: the line a command ends with."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    record = logging.LogRecord("trustregion", logging.ERROR, __file__, 0, f"error: {message}", None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
            handler.flush()


def quiet_third_party(verbose: bool) -> None:
    """Progress bars and info messages of transformers, datasets and DeepSpeed off, unless ``verbose``."""
    global _quiet
    if verbose:
        return
    _quiet = True
    import datasets
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    # Its file readers log a parse error before raising it; the loader reports it in one line (data/files.py)
    logging.getLogger("datasets.packaged_modules").setLevel(logging.CRITICAL)
    # DeepSpeed's op builders probe the C compiler (``gcc ... -laio``); setuptools logs each command line at INFO
    logging.getLogger("compilers").setLevel(logging.WARNING)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed announces, on import, that it fell back to it


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Third-party code that writes its own bars to stderr (transformers' GGUF de-quantization uses a bare tqdm,
    which its progress-bar switch does not reach): silenced when the run is quiet. Errors still raise."""
    if not _quiet:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield

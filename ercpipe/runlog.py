"""Logging for rule scripts: everything (logging records, tqdm bars, warnings) goes to the rule's log."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def rule_logging(log_path: str | os.PathLike | None, threads: int = 1) -> Iterator[logging.Logger]:
    """Route logging, stdout and stderr (tqdm writes there) into `log_path` for the duration.

    Thread counts of the numeric libraries follow the rule's `threads:` so jobs do not oversubscribe
    (the extractors also pass `threads` to torch themselves).
    An exception is logged with its message before it propagates, so the log says what went wrong.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    logger = logging.getLogger("ercpipe")
    if log_path is None:
        logging.basicConfig(level=logging.INFO, format=_FORMAT)
        yield logger
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1, encoding="utf-8") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(_FORMAT))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        start = time.time()
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield logger
            logger.info("done in %.1f s", time.time() - start)
        except Exception as err:
            logger.error("failed: %s: %s", type(err).__name__, err, exc_info=True)
            raise
        finally:
            root.removeHandler(handler)

"""What kldet-train's console shows of the run log (conf/hydra/job_logging/kldet.yaml); ``train.log`` keeps all.
kldet-eval, which runs no Hydra job, gets the same console through :func:`console_logging`."""

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import Any

# ``log.info(..., extra=FILE_ONLY)``: for the run log only (e.g. a table that is also printed).
FILE_ONLY = {"console": False}

# Warnings of these categories come from libraries, not from the run: they go to train.log only.
LIBRARY_WARNINGS = (DeprecationWarning, FutureWarning)


class ConsoleFilter(logging.Filter):
    """Drops from the console the records marked :data:`FILE_ONLY` and Lightning's advertising tips."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "console", True):
            return False
        return not (record.name.startswith("lightning") and "Tip:" in record.getMessage())


def capture_warnings() -> None:
    """Sends warnings to the ``py.warnings`` logger (so to train.log), library deprecations
    (:data:`LIBRARY_WARNINGS`) to the file only."""

    def log_warning(message: Any, category: type[Warning], filename: str, lineno: int, *args: Any) -> None:
        text = warnings.formatwarning(message, category, filename, lineno).rstrip()
        extra = FILE_ONLY if issubclass(category, LIBRARY_WARNINGS) else None
        logging.getLogger("py.warnings").warning("%s", text, extra=extra)

    warnings.showwarning = log_warning


@contextlib.contextmanager
def console_logging() -> Iterator[None]:
    """The console of kldet-train, while the block runs, for a CLI without Hydra's job logging (kldet-eval's
    checkpoint mode): messages at INFO through :class:`ConsoleFilter` (no Lightning tips), warnings as log
    records, library deprecations (:data:`LIBRARY_WARNINGS`) not shown. Restores the logging set-up after."""
    # Lightning gives its loggers their handlers when it is imported: it must be before they are re-routed.
    import lightning  # noqa: F401

    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(ConsoleFilter())
    root = logging.getLogger()
    # Lightning and torchmetrics give their loggers handlers of their own (as in the job logging config).
    routed = [
        logging.getLogger(name)
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics")
    ]
    saved = [(root.handlers, root.level, warnings.showwarning)] + [
        (lg.handlers, lg.propagate) for lg in routed
    ]
    root.handlers, root.level = [handler], logging.INFO
    for logger in routed:
        logger.handlers, logger.propagate = [], True
    capture_warnings()
    try:
        yield
    finally:
        (root.handlers, root.level, warnings.showwarning), *others = saved
        for logger, (handlers, propagate) in zip(routed, others, strict=True):
            logger.handlers, logger.propagate = handlers, propagate

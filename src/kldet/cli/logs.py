"""What kldet-train's console shows of the run log (conf/hydra/job_logging/kldet.yaml); ``train.log`` keeps all.
kldet-eval, which runs no Hydra job, gets the same console through :func:`console_logging`."""

import logging
import sys
import warnings
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


def console_logging() -> None:
    """The console of kldet-train for a CLI without Hydra's job logging (kldet-eval's checkpoint mode):
    messages at INFO through :class:`ConsoleFilter` (no Lightning tips), warnings as log records, library
    deprecations (:data:`LIBRARY_WARNINGS`) not shown."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(ConsoleFilter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    # Lightning and torchmetrics give their loggers handlers of their own (as in the job logging config).
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    capture_warnings()

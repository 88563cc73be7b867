"""What kldet-train's console shows of the run log (conf/hydra/job_logging/kldet.yaml); ``train.log`` keeps all."""

import logging
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

"""Exceptions that carry a message meant for the user, not a traceback."""

_WORKER_PREFIX = "Caught "
_WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):\n"


class KLDetError(Exception):
    """Base class: the CLIs print the message of these and exit non-zero without a traceback.

    Raised in a DataLoader worker, the error reaches the main process re-created by torch with the worker's
    whole traceback as its message; the original message is kept instead.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_worker_message_removed(args[0], type(self)),)
        super().__init__(*args)


def _worker_message_removed(message: str, kind: type) -> str:
    """The original message inside torch's "Caught X in DataLoader worker process N. Original
    Traceback ..." wrapper; any other message as it is."""
    if not (message.startswith(_WORKER_PREFIX) and _WORKER_TRACEBACK in message):
        return message
    marker = f"{kind.__module__}.{kind.__qualname__}: "
    start = message.rfind(marker)
    return message[start + len(marker) :].rstrip("\n") if start >= 0 else message


class KLDetDataError(KLDetError):
    """Bad input data: the message names the file and the record."""


class KLDetConfigError(KLDetError):
    """A configuration that cannot work (missing data set, unknown option, ...)."""

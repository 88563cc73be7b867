"""Exceptions that carry a message meant for the user, not a traceback."""


class KLDetError(Exception):
    """Base class: the CLIs print the message of these and exit non-zero without a traceback."""


class KLDetDataError(KLDetError):
    """Bad input data: the message names the file and the record."""


class KLDetConfigError(KLDetError):
    """A configuration that cannot work (missing data set, unknown option, ...)."""

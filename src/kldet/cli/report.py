"""How the six CLIs end: one exit-status rule and one error line.

Every kldet CLI exits :data:`EXIT_OK` (0) when it did its job or printed its help, and :data:`EXIT_ERROR`
(1) for anything wrong: a bad argument or config key, bad data, a failure while running, and (kldet-data
check) problems found in a data set. One status for all, because kldet-train and kldet-eval compose their
arguments with Hydra, which exits 1 on a bad override; the message tells what went wrong.
"""

import sys

EXIT_OK = 0
EXIT_ERROR = 1


def report_error(prog: str, error: BaseException | str) -> int:
    """Prints ``PROG: error: MESSAGE`` as one line on stderr; returns :data:`EXIT_ERROR`."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return EXIT_ERROR

"""``key=value`` command lines parsed into a dataclass, for the CLIs that need no Hydra composition.

The dataclass is the schema (OmegaConf structured config): an unknown key, a value of the wrong type or a
required key (default ``omegaconf.MISSING``) left out is one clear :class:`kldet.errors.KLDetConfigError`.
"""

import dataclasses
import enum
import sys
import tempfile
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kldet.cli.report import EXIT_OK, report_error
from kldet.errors import KLDetConfigError, KLDetError

Config = TypeVar("Config")


def option(default: typing.Any, help: str) -> typing.Any:
    """A dataclass field with its ``help`` text, which :func:`usage` prints."""
    return dataclasses.field(default=default, metadata={"help": help})


def usage(schema: type, prog: str, doc: str | None) -> str:
    """Help text: the CLI's docstring, then every key with its type, default and ``help`` metadata."""
    hints = typing.get_type_hints(schema)
    lines = [(doc or "").strip(), "", f"{prog} keys (key=value):"]
    for field in dataclasses.fields(schema):
        kind = getattr(hints[field.name], "__name__", None) or str(hints[field.name]).replace("typing.", "")
        value = field.default.name if isinstance(field.default, enum.Enum) else field.default
        default = {MISSING: " (required)", None: ""}.get(value, f" (default {value!r})")
        lines.append(f"  {field.name:<16} {kind:<14} {field.metadata.get('help', '')}{default}")
    return "\n".join(lines)


def parse_dotlist(
    schema: type[Config], argv: Sequence[str], prog: str, doc: str | None = None
) -> Config | None:
    """Parse ``key=value`` arguments into an instance of the dataclass ``schema``.

    Returns:
        the config, or None after printing the help when ``argv`` holds ``-h`` or ``--help``.

    Raises:
        KLDetConfigError: an argument without ``=``, an unknown key, a bad value or a missing required key
            (the message does not start with ``prog``: callers print it after their own prefix).
    """
    if any(arg in ("-h", "--help") for arg in argv):
        print(usage(schema, prog, doc))
        return None
    for arg in argv:
        if "=" not in arg:
            raise KLDetConfigError(f"expected key=value arguments, got {arg!r} (see {prog} --help)")
    try:
        config = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(list(argv)))
        missing = sorted(OmegaConf.missing_keys(config))
        if missing:
            raise KLDetConfigError("missing required " + " ".join(f"{key}=..." for key in missing))
        return OmegaConf.to_object(config)
    except OmegaConfBaseException as error:
        message = str(error).splitlines()[0]
        key = getattr(error, "full_key", None)
        named = f"{key}: {message}" if key and key not in message else message
        raise KLDetConfigError(f"{named} (see {prog} --help)") from None


def check_writable_folder(key: str, folder: Path) -> None:
    """Creates ``folder`` and writes a probe file there, so that an output the user named ``key=`` that
    cannot be written fails before any compute.

    Raises:
        KLDetConfigError: ``folder`` is a file, or cannot be created or written.
    """
    if folder.exists() and not folder.is_dir():
        raise KLDetConfigError(f"{key}={folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise KLDetConfigError(f"{key}={folder}: cannot write there ({error.strerror or error})") from None


def run_dotlist_cli(
    schema: type[Config],
    argv: Sequence[str] | None,
    prog: str,
    doc: str | None,
    action: Callable[[Config], str],
) -> int:
    """A whole ``key=value`` command: parse ``argv`` (default ``sys.argv[1:]``) into ``schema``, run
    ``action`` on it and print the line it returns; a :class:`KLDetError` is printed as one line
    (:func:`kldet.cli.report.report_error`).

    Returns:
        the exit status (:mod:`kldet.cli.report`): 0 (done, or help printed) or 1 (error).
    """
    try:
        config = parse_dotlist(schema, sys.argv[1:] if argv is None else argv, prog, doc)
        if config is None:
            return EXIT_OK
        done = action(config)
    except KLDetError as error:
        return report_error(prog, error)
    print(f"{prog}: {done}", file=sys.stderr)
    return EXIT_OK

"""How a run ends when it does not complete: the exceptions the CLI turns into one line.

- :class:`MixtrainError`: bad input (a config value, a dataset, a checkpoint). Exit code 2.
- :class:`RunStopped`: training stopped on purpose and can be continued or inspected
  (Ctrl-C / SIGTERM: exit 130 / 143; a non-finite loss: exit 1).

Neither prints a traceback unless ``MIXTRAIN_DEBUG=1``. Anything else that escapes is a
bug in mixtrain.
"""

import argparse
import errno
import os
import shlex
import sys
from typing import Optional, Sequence

EXIT_USAGE = 2


class MixtrainError(Exception):
    """Bad input: a config value, a dataset, a checkpoint. The message names the fix.

    Raised in a DataLoader worker, it comes back as ``Caught MixtrainError in DataLoader worker
    process N. Original Traceback ...`` (torch's ExceptionWrapper): the message is read back out
    of it, so that it is still one line.
    """

    def __init__(self, message: str = "") -> None:
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = message.rstrip().rsplit(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


class RunStopped(Exception):
    """Training stopped before the end; the message says where and how to go on."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# What the disk or the OS says of a path, not a bug of mixtrain's: -> what to do about it.
ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "free space, or write elsewhere", errno.EDQUOT: "free space in your quota, or write elsewhere",
    errno.EFBIG: "the file size limit (ulimit -f, or the filesystem's) is reached: raise it, or write elsewhere",
    errno.EROFS: "write elsewhere", errno.ENAMETOOLONG: "the OS limits a name to 255 bytes and a path to 4096: "
    "pick a shorter path",
}


def environment_error(ex: BaseException) -> Optional[str]:
    """One line for an OSError of the environment (a full disk, a size limit, a read-only filesystem, a
    path longer than the OS takes), naming the path and what to do; None for any other error."""
    if not isinstance(ex, OSError) or ex.errno not in ENVIRONMENT_ERRORS:
        return None
    verb = "cannot use" if ex.errno == errno.ENAMETOOLONG else "cannot write"
    where = f" {ex.filename}" if ex.filename else ""
    return f"{verb}{where} ({ex.strerror or os.strerror(ex.errno)}): {ENVIRONMENT_ERRORS[ex.errno]}"


def say(message: str) -> None:
    """One line on stderr, from the first process only under torchrun (its RANK)."""
    if os.environ.get("RANK", "0") == "0":
        sys.stderr.write(f"mixtrain: {message}\n")
        sys.stderr.flush()


def fail(message: str) -> int:
    """Say ``error: message``; the exit code of bad input."""
    say(f"error: {message}")
    return EXIT_USAGE


def resume_command(run_dir) -> str:
    """``mixtrain train resume=RUN``, quoted for the shell where the path needs it (mixtrain reads
    the path whole, so a ``,`` or ``[]`` in it needs no Hydra quoting)."""

    return f"mixtrain train {shlex.quote(f'resume={run_dir}')}"


class CommandParser(argparse.ArgumentParser):
    """argparse for a plain command: a usage error is one line naming the usage, exit 2, as every
    mixtrain error (argparse's own prints the usage block and exits itself)."""

    def __init__(self, prog: str, usage: str, short: str) -> None:
        super().__init__(prog=prog, usage=usage, add_help=False)
        self.short = short
        self.add_argument("-h", "--help", action="store_true")

    def parse(self, args: Sequence[str]) -> Optional[argparse.Namespace]:
        """The parsed arguments, or None after printing the usage for ``-h``/``--help``."""
        parsed = self.parse_args(list(args))
        if parsed.help:
            print(self.usage, end="")
            return None
        return parsed

    def error(self, message: str) -> None:
        raise MixtrainError(f"{message} (usage: {self.short})")

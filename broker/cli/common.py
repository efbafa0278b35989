"""What every ``broker`` command shares: usage errors (exit 2, a message, no traceback) and the
parser class."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_USAGE = 2


class CliError(Exception):
    """A problem with what the user asked for; printed without a traceback, exit status 2."""


def fail(message: str) -> NoReturn:
    raise CliError(message)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)

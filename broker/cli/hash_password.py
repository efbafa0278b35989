"""``broker hash-password``: the scrypt hash of an approver's inbox password."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from broker.cli.common import fail


def register(commands: Any) -> None:
    hash_command = commands.add_parser(
        "hash-password",
        help="print the scrypt hash of a password for approvers.<name>.password_hash",
        description="Reads the password from the terminal (asked twice) or one line from stdin, "
        "and prints the hash to put in the configuration.",
    )
    hash_command.set_defaults(handler=_cmd_hash_password)


MIN_PASSWORD_LENGTH = 12
"""What `hash-password` accepts at least: NIST SP 800-63B asks for 8, and a password that approves
real-money calls, stored as a hash that may leak, deserves more."""


def _cmd_hash_password(args: argparse.Namespace) -> int:
    from getpass import getpass

    from broker.channels.web.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass("Password: ")
        if getpass("Again: ") != password:
            fail("the two passwords differ; nothing was hashed")
    else:
        # One line from a pipe (`printf '%s' "$PW" | broker hash-password`); only the line break is dropped.
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        fail("the password is empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        fail(
            f"the password has {len(password)} characters; use at least {MIN_PASSWORD_LENGTH} "
            "(the inbox's password decides approvals: a short one is guessed offline from a leaked hash)"
        )
    print(hash_password(password))
    return 0

"""``broker policy convert FILE [-o OUT]``: a PolicyLayer policy as the equivalent native policy.

The broker loads PolicyLayer policies as they are (broker/policy/formats); converting is for
moving to the native format, to add what only it can say. Exit 0 with the native YAML (on
stdout or in OUT); 2 when the file cannot be read or is not a valid policy, with every problem
positioned in FILE. A file that is already native is copied unchanged, with a note on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from broker.cli.common import EXIT_USAGE
from broker.policy import PolicyError, load_policy
from broker.policy.document import MappingNode, parse_document
from broker.policy.formats import Format, to_native
from broker.policy.formats.render import render_native
from broker.policy.loader import decode_policy


def register(policy_commands: Any) -> None:
    convert = policy_commands.add_parser(
        "convert", help="write a PolicyLayer policy as the equivalent native policy (exit 2 on errors)"
    )
    convert.add_argument("file")
    convert.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")
    convert.set_defaults(handler=_cmd_policy_convert)


def _cmd_policy_convert(args: argparse.Namespace) -> int:
    name = args.file
    try:
        data = Path(name).read_bytes()
        load_policy(data, source=name)  # every problem, front end and native, with positions
        text = decode_policy(data, source=name)
        found, native, _ = to_native(parse_document(text, source=name), source=name)
    except OSError as exc:
        print(f"{name}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    if found is Format.NATIVE or not isinstance(native, MappingNode):
        print(f"{name}: already a native policy; copied unchanged", file=sys.stderr)
        output = text
    else:
        output = render_native(native, found=found, source=name)
    if args.output is None:
        sys.stdout.write(output)
        return 0
    try:
        Path(args.output).write_text(output, encoding="utf-8")
    except OSError as exc:
        print(f"{args.output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.output}: written ({found.value} policy converted)", file=sys.stderr)
    return 0

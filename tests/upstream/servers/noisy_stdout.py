"""Runs the demo server over stdio, but puts a line that is not JSON-RPC before each of its messages.

Careless servers print banners and debug output to stdout; a client must skip such lines.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

NOISE = (b"Starting demo server v1.0 (not JSON-RPC)\n", b'{"truncated": \n', b"\xff\xfe binary junk\n")


def main() -> int:
    demo = Path(__file__).with_name("demo_server.py")
    child = subprocess.Popen([sys.executable, str(demo), "stdio"], stdout=subprocess.PIPE)
    assert child.stdout is not None
    out = sys.stdout.buffer
    for number, line in enumerate(child.stdout):
        out.write(NOISE[number % len(NOISE)] + line)
        out.flush()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())

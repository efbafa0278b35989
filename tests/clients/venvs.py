"""Virtualenvs for the agent clients that cannot share the broker's: one per pinned requirements file.

`tests/clients/requirements-<client>.txt` becomes `<root>/<client>/`, where root is
$BROKER_CLIENT_VENVS or `.venv-clients/` in the checkout. A virtualenv is (re)built only when it is
missing or was built from a different requirements file (its hash is kept beside it), so CI builds
them once in .ci/run (`python -m tests.clients.venvs`) and the session fixture finds them ready.

Exception tree:

    VenvError       the virtualenv could not be made or the packages not installed; says which and why
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLIENTS = ("openai-agents", "langchain")


class VenvError(Exception):
    pass


def root() -> Path:
    return Path(os.environ.get("BROKER_CLIENT_VENVS") or REPO / ".venv-clients")


def requirements(client: str) -> Path:
    return HERE / f"requirements-{client}.txt"


def python_of(client: str) -> Path:
    return root() / client / "bin" / "python"


def ensure(client: str) -> Path:
    """The client's virtualenv interpreter, building the virtualenv first if it is missing or stale."""
    wanted = hashlib.sha256(requirements(client).read_bytes()).hexdigest()
    venv = root() / client
    stamp = venv / "requirements.sha256"
    if python_of(client).exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python_of(client)
    shutil.rmtree(venv, ignore_errors=True)
    # The base interpreter, not the broker's virtualenv: nothing of the broker's may leak in.
    base = getattr(sys, "_base_executable", sys.executable)
    for command in (
        [base, "-m", "venv", str(venv)],
        [
            str(python_of(client)),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(requirements(client)),
        ],
    ):
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
        if done.returncode != 0:
            raise VenvError(
                f"{client}: `{' '.join(command)}` exited with {done.returncode}:\n{done.stdout}{done.stderr}"
            )
    stamp.write_text(wanted + "\n")
    return python_of(client)


if __name__ == "__main__":
    for name in sys.argv[1:] or CLIENTS:
        try:
            print(f"{name}: {ensure(name)}")
        except VenvError as exc:
            print(exc, file=sys.stderr)
            sys.exit(1)

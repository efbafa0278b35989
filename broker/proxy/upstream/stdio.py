"""An upstream MCP server run as a child process, speaking newline-delimited JSON-RPC on stdin/stdout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping

import orjson

from broker.proxy import exact_json
from broker.proxy.upstream.base import JsonObject, NotificationHandler, UpstreamLost, UpstreamUnavailable
from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.jsonrpc import initialize_params, negotiated_version
from broker.proxy.upstream.multiplexed import MultiplexedConnection
from broker.proxy.upstream.spec import StdioServer

logger = logging.getLogger(__name__)
stderr_logger = logging.getLogger(f"{__name__}.stderr")

INHERITED_VARIABLES = (
    # POSIX
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "LOGNAME",
    "PATH",
    "SHELL",
    "TERM",
    "TMPDIR",
    "USER",
    # Windows
    "APPDATA",
    "HOMEDRIVE",
    "HOMEPATH",
    "LOCALAPPDATA",
    "PATHEXT",
    "PROCESSOR_ARCHITECTURE",
    "SYSTEMDRIVE",
    "SYSTEMROOT",
    "TEMP",
    "USERNAME",
    "USERPROFILE",
)
"""What a server inherits from the broker's environment; the rest (database URLs, chat tokens)
stays with the broker, and a server that needs more names it in its ``env``."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
EXIT_GRACE_SECONDS = 2.0
"""How long a server may take to exit after its stdin closes, and again after SIGTERM."""
KILL_WAIT_SECONDS = 5.0
"""How long to wait for the exit after SIGKILL. It cannot be ignored, so this only bounds how soon a
busy machine schedules and reaps the dying process: longer than the polite grace, so closing a
connection does not leave a process (or a zombie) behind when the machine is loaded."""
EXIT_REPORT_SECONDS = 0.5
"""How long to wait, once the server's stdout ends, for its exit code to report."""


def child_environment(environ: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    inherited = {name: environ[name] for name in INHERITED_VARIABLES if name in environ}
    return inherited | dict(extra)


class StdioConnection(MultiplexedConnection):
    def __init__(
        self,
        spec: StdioServer,
        on_notification: NotificationHandler,
        *,
        environ: Mapping[str, str],
        exit_grace: float = EXIT_GRACE_SECONDS,
    ) -> None:
        super().__init__(spec.name, on_notification)
        self._spec = spec
        self._exit_grace = exit_grace
        self._environ = environ
        self._spawn: asyncio.Future[asyncio.subprocess.Process] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._stdin: asyncio.StreamWriter | None = None

    @property
    def pid(self) -> int | None:
        """The server process's id, once started."""
        return None if self._process is None else self._process.pid

    async def start(self) -> JsonObject:
        spec = self._spec
        # Shielded: a spawn interrupted by cancellation would leave a process nobody knows
        # about, so it always completes and `aclose` finds and stops what it started.
        self._spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                spec.command,
                *spec.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=child_environment(self._environ, spec.env),
                cwd=spec.cwd,
                # Its own process group, so closing can stop the helpers it spawns as well.
                start_new_session=True,
                limit=MAX_MESSAGE_BYTES,
            )
        )
        try:
            process = await asyncio.shield(self._spawn)
        except (OSError, ValueError) as exc:
            raise UpstreamUnavailable(self.server, f"cannot start {spec.command!r}: {exc}") from exc
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        self._process = process
        self._stdin = process.stdin
        self._background.spawn(self._read_stdout(process.stdout), name="stdout reader")
        self._background.spawn(self._drain_stderr(process.stderr), name="stderr reader")
        result = await self.request("initialize", initialize_params())
        negotiated_version(self.server, result)
        await self.notify("notifications/initialized")
        return result

    async def _send(self, message: JsonObject, caller: UpstreamCaller | None = None) -> None:
        stdin = self._stdin
        if stdin is None or stdin.is_closing():
            raise UpstreamUnavailable(self.server, await self._why_not_running())
        stdin.write(exact_json.dumps(message) + b"\n")
        try:
            await stdin.drain()
        except ConnectionError as exc:
            # Part of the line may already sit in the server's pipe.
            raise UpstreamLost(self.server, f"server process stopped reading: {exc}") from exc

    async def _why_not_running(self) -> str:
        # A process that already exited closes its pipes before the stdout reader has collected
        # its exit code; wait for that, so the agent reads "exited with code N".
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_REPORT_SECONDS * 2):
                await self.wait_closed()
        return self._close_reason or "server process is not running"

    def _send_soon(self, message: JsonObject) -> None:
        stdin = self._stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(exact_json.dumps(message) + b"\n")

    async def _read_stdout(self, stdout: asyncio.StreamReader) -> None:
        reason = "server process closed its stdout"
        try:
            while line := await _read_line(stdout, self.server):
                if line.isspace():
                    continue
                try:
                    message = exact_json.loads(line)
                except orjson.JSONDecodeError:
                    logger.warning(
                        "upstream '%s': skipped a stdout line that is not JSON: %.200r", self.server, line
                    )
                    continue
                await self._receive(message)
        except ConnectionError as exc:
            reason = f"reading the server's stdout failed: {exc}"
        finally:
            if self._close_reason is None:  # not our own aclose: find out what happened
                code = await self._exit_code(timeout=EXIT_REPORT_SECONDS)
                if code is not None:
                    reason = f"server process exited with code {code}"
                self._lose(reason)

    async def _drain_stderr(self, stderr: asyncio.StreamReader) -> None:
        # Always read to the end: a server blocked on a full stderr pipe would stop answering.
        with contextlib.suppress(ConnectionError):
            while line := await _read_line(stderr, self.server):
                stderr_logger.info("[%s] %s", self.server, line.decode("utf-8", "replace").rstrip())

    async def _exit_code(self, *, timeout: float) -> int | None:
        process = self._process
        if process is None:
            return None
        with contextlib.suppress(TimeoutError):
            # wait() also waits for the pipes to close, which a lingering grandchild can delay.
            async with asyncio.timeout(timeout):
                await process.wait()
        return process.returncode

    async def aclose(self) -> None:
        self._lose("connection closed", expected=True)
        if self._process is None and self._spawn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._process = await self._spawn
                self._stdin = self._process.stdin
        process = self._process
        if process is not None and process.returncode is None:
            # The spec's shutdown order: close stdin, give the server time, then signal it.
            if self._stdin is not None:
                self._stdin.close()
            if await self._exit_code(timeout=self._exit_grace) is None:
                _stop_group(process, force=False)
                if await self._exit_code(timeout=self._exit_grace) is None:
                    _stop_group(process, force=True)
                    if await self._exit_code(timeout=max(self._exit_grace, KILL_WAIT_SECONDS)) is None:
                        logger.error("upstream '%s': process %d survived SIGKILL", self.server, process.pid)
        elif self._stdin is not None:
            self._stdin.close()
        await self._background.cancel_all()


async def _read_line(stream: asyncio.StreamReader, server: str) -> bytes:
    """The next line, or b"" at the end; an over-long line is logged and skipped."""
    while True:
        try:
            return await stream.readline()
        except ValueError:
            logger.error("upstream '%s': skipped a line longer than %d bytes", server, MAX_MESSAGE_BYTES)


def _stop_group(process: asyncio.subprocess.Process, *, force: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if sys.platform == "win32":
            process.kill()
        else:
            os.killpg(process.pid, signal.SIGKILL if force else signal.SIGTERM)

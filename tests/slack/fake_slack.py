"""A local stand-in for Slack's Web API (and its Socket Mode websocket) on a loopback port.

slack_sdk talks to it over real HTTP through `base_url`. It records every call, keeps the
messages it was asked to post and update, checks the Block Kit limits Slack enforces, and can
be told to rate-limit a method (HTTP 429 with Retry-After), to hold a method's calls unanswered
(a request in flight), or to go down entirely (connection refused) and come back on the same port.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from aiohttp import WSMsgType, web

BOT_TOKEN = "xoxb-fake-bot-token"
APP_TOKEN = "xapp-fake-app-token"
_T = TypeVar("_T")


@dataclass
class SlackCall:
    method: str
    params: dict[str, Any]
    token: str | None


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    """Every version of the message, oldest first."""


class FakeSlack:
    def __init__(
        self,
        *,
        channels: Mapping[str, str] | None = None,
        usergroups: Mapping[str, list[str]] | None = None,
    ) -> None:
        # Channel names and ids Slack would accept, mapped to the id it answers with.
        self.channels = dict(channels or {"#approvals": "C0APPROVALS", "C0RISK": "C0RISK"})
        self.usergroups = {group: list(users) for group, users in (usergroups or {}).items()}
        self.calls: list[SlackCall] = []
        self.messages: dict[tuple[str, str], Message] = {}
        self.replies: list[Message] = []
        self.deleted: list[Message] = []
        self.socket_received: list[dict[str, Any]] = []
        self._rate_limits: dict[str, list[float]] = {}
        self._holds: dict[str, anyio.Event] = {}
        self._next_ts = 0
        self._changed = anyio.Event()
        self._socket: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeSlack:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket-mode", self._socket_mode)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await self.come_back()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    async def go_down(self) -> None:
        """Connections are refused until `come_back` (no keep-alive connection survives either)."""
        assert self._site is not None
        await self._site.stop()
        self._site = None

    async def come_back(self) -> None:
        """Listens again, on the port it had before (a kernel-chosen one the first time)."""
        assert self._runner is not None and self._site is None
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._site = web.SockSite(self._runner, listener)
        await self._site.start()

    def rate_limit(self, method: str, *, times: int = 1, retry_after: float = 1) -> None:
        """The next `times` calls of `method` get HTTP 429 with this Retry-After."""
        self._rate_limits.setdefault(method, []).extend([retry_after] * times)

    def hold(self, method: str) -> None:
        """Calls of `method` are recorded but not answered until `release(method)`."""
        self._holds.setdefault(method, anyio.Event())

    def release(self, method: str) -> None:
        gate = self._holds.pop(method, None)
        if gate is not None:
            gate.set()

    # -- what the tests look at ------------------------------------------------------------------

    def calls_to(self, method: str) -> list[SlackCall]:
        return [call for call in self.calls if call.method == method]

    async def wait_for(self, condition: Callable[[], _T | None]) -> _T:
        """The first truthy value of `condition`, re-checked after every call Slack receives."""
        while True:
            changed = self._changed
            value = condition()
            if value:
                return value
            await changed.wait()

    async def wait_for_call(self, method: str, count: int = 1) -> list[SlackCall]:
        return await self.wait_for(lambda: calls if len(calls := self.calls_to(method)) >= count else None)

    def only_message(self) -> Message:
        assert len(self.messages) == 1, f"expected one message, Slack has {len(self.messages)}"
        return next(iter(self.messages.values()))

    async def push_envelope(self, envelope: Mapping[str, Any]) -> None:
        """Sends a Socket Mode envelope to the connected app, once one is connected."""
        await self.wait_for(lambda: self._socket is not None)
        assert self._socket is not None
        await self._socket.send_str(json.dumps(envelope))

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- the Web API -----------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
        elif request.can_read_body:
            params.update(dict(await request.post()))
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else params.pop("token", None)
        self.calls.append(SlackCall(method, params, token))
        gate = self._holds.get(method)
        if gate is not None:
            self._changed_now()
            await gate.wait()
        try:
            response = self._answer(method, params, token)
        finally:
            self._changed_now()
        # No keep-alive: once the fake goes down, every client really finds it unreachable.
        response.force_close()
        return response

    def _answer(self, method: str, params: dict[str, Any], token: str | None) -> web.Response:
        pending_limits = self._rate_limits.get(method)
        if pending_limits:
            retry_after = pending_limits.pop(0)
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": f"{retry_after:g}"}
            )
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != expected:
            return _error("invalid_auth")
        handler = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.delete": self._delete,
            "chat.postEphemeral": self._post_ephemeral,
            "views.open": self._views_open,
            "usergroups.users.list": self._usergroup_users,
            "apps.connections.open": self._connections_open,
        }.get(method)
        if handler is None:
            return _error("unknown_method")
        return handler(params)

    def _auth_test(self, params: dict[str, Any]) -> web.Response:
        return _ok(user_id="U0BROKER", team_id="T0FAKE", bot_id="B0BROKER")

    def _post_message(self, params: dict[str, Any]) -> web.Response:
        channel = self._channel_id(str(params.get("channel")))
        if channel is None:
            return _error("channel_not_found")
        problem = _block_problem(params.get("blocks"))
        if problem:
            return _error("invalid_blocks", detail=problem)
        self._next_ts += 1
        ts = f"1700000000.{self._next_ts:06d}"
        message = Message(channel, ts, str(params.get("text", "")), list(params.get("blocks") or []))
        message.thread_ts = params.get("thread_ts")
        message.history.append({"text": message.text, "blocks": message.blocks})
        if message.thread_ts:
            if (channel, message.thread_ts) not in self.messages:
                return _error("thread_not_found")
            self.replies.append(message)
        else:
            self.messages[(channel, ts)] = message
        return _ok(channel=channel, ts=ts, message={"text": message.text, "ts": ts})

    def _channel_id(self, name_or_id: str) -> str | None:
        if name_or_id in self.channels.values():
            return name_or_id
        return self.channels.get(name_or_id)

    def _update(self, params: dict[str, Any]) -> web.Response:
        message = self.messages.get((str(params.get("channel")), str(params.get("ts"))))
        if message is None:
            return _error("message_not_found")
        problem = _block_problem(params.get("blocks"))
        if problem:
            return _error("invalid_blocks", detail=problem)
        message.text = str(params.get("text", ""))
        message.blocks = list(params.get("blocks") or [])
        message.history.append({"text": message.text, "blocks": message.blocks})
        return _ok(channel=message.channel, ts=message.ts)

    def _delete(self, params: dict[str, Any]) -> web.Response:
        message = self.messages.pop((str(params.get("channel")), str(params.get("ts"))), None)
        if message is None:
            return _error("message_not_found")
        self.deleted.append(message)
        return _ok(channel=message.channel, ts=message.ts)

    def _post_ephemeral(self, params: dict[str, Any]) -> web.Response:
        if str(params.get("channel")) not in self.channels.values():
            return _error("channel_not_found")
        if not params.get("user"):
            return _error("user_not_in_channel")
        return _ok(message_ts="1700000000.999999")

    def _views_open(self, params: dict[str, Any]) -> web.Response:
        view = params.get("view")
        if not params.get("trigger_id"):
            return _error("invalid_trigger_id")
        if not isinstance(view, dict) or view.get("type") != "modal" or len(view["title"]["text"]) > 24:
            return _error("invalid_arguments")
        return _ok(view={"id": "V0DENY", **view})

    def _usergroup_users(self, params: dict[str, Any]) -> web.Response:
        users = self.usergroups.get(str(params.get("usergroup")))
        if users is None:
            return _error("no_such_subteam")
        return _ok(users=users)

    def _connections_open(self, params: dict[str, Any]) -> web.Response:
        return _ok(url=f"ws://127.0.0.1:{self.port}/socket-mode")

    # -- Socket Mode -------------------------------------------------------------------------------

    async def _socket_mode(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        await socket.send_str(json.dumps({"type": "hello", "num_connections": 1}))
        self._socket = socket
        self._changed_now()
        async for frame in socket:
            if frame.type == WSMsgType.TEXT:
                self.socket_received.append(json.loads(frame.data))
                self._changed_now()
        if self._socket is socket:
            self._socket = None
        return socket


def _ok(**fields: Any) -> web.Response:
    return web.json_response({"ok": True, **fields})


def _error(code: str, **fields: Any) -> web.Response:
    return web.json_response({"ok": False, "error": code, **fields})


def _block_problem(blocks: Any) -> str | None:
    """The Block Kit limits Slack itself enforces (a message breaking them is refused)."""
    if blocks is None:
        return None
    if not isinstance(blocks, list) or len(blocks) > 50:
        return "blocks must be a list of at most 50"
    for block in blocks:
        kind = block.get("type")
        if kind == "header" and (block["text"]["type"] != "plain_text" or len(block["text"]["text"]) > 150):
            return "header text must be plain_text of at most 150 characters"
        if kind == "section":
            if "text" in block and len(block["text"]["text"]) > 3000:
                return f"section text is {len(block['text']['text'])} characters, more than 3000"
            fields = block.get("fields", [])
            if len(fields) > 10 or any(len(item["text"]) > 2000 for item in fields):
                return "at most 10 fields of at most 2000 characters"
        if kind == "actions":
            for element in block["elements"]:
                if len(element.get("action_id", "")) > 255 or len(element.get("value", "")) > 2000:
                    return "action_id or value too long"
    return None

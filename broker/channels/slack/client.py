"""The few Slack Web API methods the broker calls, with Slack's failures sorted into our error tree.

slack_sdk's own retry handlers are switched off: they sleep on the event loop's clock where
nobody can inject time, and the broker decides itself which calls deserve another try
(see `broker.channels.slack.notifier`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from broker.channels.slack.errors import SlackRateLimited, SlackRejected, SlackUnavailable

DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_RETRY_AFTER_SECONDS = 1.0

# Error codes Slack returns with ok: false that describe its own trouble, not our request.
_TRANSIENT_CODES = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"}
)


@dataclass(frozen=True, slots=True)
class PostedMessage:
    channel: str
    """The channel id Slack answered with (a name such as #approvals is resolved by Slack)."""
    ts: str


class SlackApi:
    def __init__(
        self, token: str, *, base_url: str | None = None, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        if not token:
            raise ValueError("a Slack bot token is required")
        self._token = token
        self._base_url = base_url or AsyncWebClient.BASE_URL
        self._timeout = timeout
        self._client: AsyncWebClient | None = None

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[SlackApi]:
        """One HTTP connection pool for every call made while the context is open."""
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._client = AsyncWebClient(
                token=self._token, base_url=self._base_url, session=session, retry_handlers=[]
            )
            try:
                yield self
            finally:
                self._client = None

    @property
    def web_client(self) -> AsyncWebClient:
        if self._client is None:
            raise RuntimeError("SlackApi.connected() must be entered before calling Slack")
        return self._client

    async def post_message(
        self,
        channel: str,
        *,
        text: str,
        blocks: Sequence[Mapping[str, Any]] | None = None,
        thread_ts: str | None = None,
    ) -> PostedMessage:
        response = await self._call(
            "chat.postMessage",
            self.web_client.chat_postMessage(
                channel=channel,
                text=text,
                blocks=[dict(block) for block in blocks] if blocks is not None else None,
                thread_ts=thread_ts,
                unfurl_links=False,
                unfurl_media=False,
            ),
        )
        posted_channel, ts = response.get("channel"), response.get("ts")
        if not isinstance(posted_channel, str) or not isinstance(ts, str):
            raise SlackUnavailable("chat.postMessage answered without a channel and ts")
        return PostedMessage(posted_channel, ts)

    async def update_message(
        self, message: PostedMessage, *, text: str, blocks: Sequence[Mapping[str, Any]]
    ) -> None:
        await self._call(
            "chat.update",
            self.web_client.chat_update(
                channel=message.channel, ts=message.ts, text=text, blocks=[dict(block) for block in blocks]
            ),
        )

    async def delete_message(self, message: PostedMessage) -> None:
        await self._call("chat.delete", self.web_client.chat_delete(channel=message.channel, ts=message.ts))

    async def post_ephemeral(self, channel: str, user: str, text: str) -> None:
        await self._call(
            "chat.postEphemeral", self.web_client.chat_postEphemeral(channel=channel, user=user, text=text)
        )

    async def open_view(self, trigger_id: str, view: Mapping[str, Any]) -> None:
        await self._call("views.open", self.web_client.views_open(trigger_id=trigger_id, view=dict(view)))

    async def usergroup_members(self, usergroup: str) -> frozenset[str]:
        response = await self._call(
            "usergroups.users.list", self.web_client.usergroups_users_list(usergroup=usergroup)
        )
        users = response.get("users")
        if not isinstance(users, list) or not all(isinstance(user, str) for user in users):
            raise SlackUnavailable(f"usergroups.users.list answered without a user list for {usergroup}")
        return frozenset(users)

    @staticmethod
    async def _call(method: str, request: Awaitable[AsyncSlackResponse]) -> AsyncSlackResponse:
        try:
            return await request
        except SlackApiError as exc:
            raise _classified(method, exc) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise SlackUnavailable(f"Slack is unreachable ({method}): {type(exc).__name__}: {exc}") from exc


def _classified(method: str, exc: SlackApiError) -> SlackRejected | SlackUnavailable:
    response = exc.response
    status = getattr(response, "status_code", None)
    if status == 429:
        return SlackRateLimited(method, _retry_after(getattr(response, "headers", None)))
    data = getattr(response, "data", None)
    code = data.get("error") if isinstance(data, dict) else None
    if (isinstance(status, int) and status >= 500) or code in _TRANSIENT_CODES:
        return SlackUnavailable(f"Slack failed {method}: HTTP {status} {code or ''}".rstrip())
    return SlackRejected(method, str(code or f"HTTP {status}"))


def _retry_after(headers: Mapping[str, Any] | None) -> float:
    raw = headers.get("Retry-After") if headers is not None else None
    try:
        seconds = float(raw) if raw is not None else DEFAULT_RETRY_AFTER_SECONDS
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER_SECONDS
    return seconds if seconds >= 0 else DEFAULT_RETRY_AFTER_SECONDS

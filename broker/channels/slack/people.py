"""Who a Slack user is to the broker, and how the broker names people in Slack.

A Slack user decides as the approver whose `slack_user` is their id. Rules can also name Slack
user groups, in two ways:

* directly, as ``@slack:S0123ABCD`` in a rule's approvers;
* through the config mapping ``slack.user_groups: {trading-leads: S0123ABCD}``, so members of
  that Slack group count as members of the broker group ``trading-leads`` (rules keep saying
  ``@trading-leads``).

Membership is looked up with ``usergroups.users.list`` and cached for a while. A Slack user
without an approver account who belongs to a named group decides as ``slack:<user id>``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from broker.approvals.approvers import ApproverDirectory
from broker.approvals.model import Approval, Approver
from broker.channels.slack.blocks import escape
from broker.channels.slack.client import SlackApi

SLACK_NAME_PREFIX = "slack:"
_SLACK_ID = re.compile(r"^[A-Z0-9]{2,40}$")


def is_slack_id(value: str) -> bool:
    return bool(_SLACK_ID.match(value))


@dataclass(frozen=True, slots=True)
class _Members:
    users: frozenset[str]
    fetched_at: float


class UserGroupMembers:
    """Members of Slack user groups, cached for `ttl` seconds."""

    def __init__(self, api: SlackApi, *, ttl: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self._ttl = ttl
        self._monotonic = monotonic
        self._cache: dict[str, _Members] = {}

    async def members(self, usergroup: str) -> frozenset[str]:
        """Raises SlackError when Slack cannot say; callers then treat the user as not a member."""
        now = self._monotonic()
        cached = self._cache.get(usergroup)
        if cached is not None and now - cached.fetched_at < self._ttl:
            return cached.users
        users = await self._api.usergroup_members(usergroup)
        self._cache[usergroup] = _Members(users, now)
        return users


class SlackPeople:
    def __init__(
        self,
        directory: ApproverDirectory,
        members: UserGroupMembers,
        *,
        may_decide: Callable[[Approval, Approver], str | None],
        default_approvers: Sequence[str],
        user_groups: Mapping[str, str],
    ) -> None:
        self._directory = directory
        self._members = members
        self._may_decide = may_decide
        self._default_approvers = tuple(default_approvers)
        self._user_groups = dict(user_groups)

    async def approver(self, user_id: str, approval: Approval) -> Approver | None:
        """The approver `user_id` decides `approval` as; None when the broker does not know them.

        Slack group membership is only looked up when the account alone is not enough, so a
        Slack outage cannot lock out approvers named directly. Raises SlackError when a needed
        lookup fails (the caller refuses the click: fail closed).
        """
        account = self._directory.by_slack_user(user_id)
        known = Approver(account.name, account.groups) if account is not None else None
        if known is not None and self._may_decide(approval, known) is None:
            return known
        groups = set(known.groups) if known is not None else set()
        for group, usergroup in self._slack_groups_named_by(approval).items():
            if group not in groups and user_id in await self._members.members(usergroup):
                groups.add(group)
        if known is not None:
            return Approver(known.name, frozenset(groups))
        if groups:
            return Approver(f"{SLACK_NAME_PREFIX}{user_id}", frozenset(groups), identified=False)
        return None

    def _slack_groups_named_by(self, approval: Approval) -> dict[str, str]:
        """Broker group name -> Slack user group id, for the groups the approval's rule names."""
        named: dict[str, str] = {}
        for entry in approval.approvers or self._default_approvers:
            if not entry.startswith("@"):
                continue
            group = entry[1:]
            if group.startswith(SLACK_NAME_PREFIX) and is_slack_id(group[len(SLACK_NAME_PREFIX) :]):
                named[group] = group[len(SLACK_NAME_PREFIX) :]
            elif group in self._user_groups:
                named[group] = self._user_groups[group]
        return named

    def mention(self, name: str | None) -> str:
        """How Slack shows a person who decided: a mention when their Slack id is known, else their name."""
        if name is None:
            return "someone"
        if name.startswith(SLACK_NAME_PREFIX) and is_slack_id(name[len(SLACK_NAME_PREFIX) :]):
            return f"<@{name[len(SLACK_NAME_PREFIX) :]}>"
        account = self._directory.by_name(name)
        if account is not None and account.slack_user and is_slack_id(account.slack_user):
            return f"<@{account.slack_user}>"
        return escape(name)

"""The people who may decide approvals, and how each channel recognises them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from broker.approvals.model import Approver


@dataclass(frozen=True, slots=True)
class ApproverAccount:
    name: str
    groups: frozenset[str] = frozenset()
    token_sha256: str | None = None
    """API/CLI bearer token; only its SHA-256 is kept."""
    slack_user: str | None = None
    password_hash: str | None = None
    """For the web inbox sign-in (scrypt, see broker.channels.web)."""
    oidc_sub: str | None = None
    """The identity provider's ``sub`` for this person (single sign-on, see broker.config.sso)."""
    email: str | None = None
    """Matched against the identity provider's verified ``email`` when sign-on matches by e-mail."""

    @property
    def approver(self) -> Approver:
        return Approver(self.name, self.groups)


class ApproverDirectory:
    def __init__(self, accounts: Iterable[ApproverAccount] = ()) -> None:
        self._by_name: dict[str, ApproverAccount] = {}
        self._by_token: dict[str, ApproverAccount] = {}
        self._by_slack: dict[str, ApproverAccount] = {}
        self._by_sub: dict[str, ApproverAccount] = {}
        self._by_email: dict[str, ApproverAccount] = {}
        for account in accounts:
            self._by_name[account.name] = account
            if account.token_sha256:
                self._by_token[account.token_sha256] = account
            if account.slack_user:
                self._by_slack[account.slack_user] = account
            if account.oidc_sub:
                self._by_sub[account.oidc_sub] = account
            if account.email:
                self._by_email[account.email.casefold()] = account

    def by_token(self, token: str) -> ApproverAccount | None:
        return self._by_token.get(hashlib.sha256(token.encode()).hexdigest())

    def by_name(self, name: str) -> ApproverAccount | None:
        return self._by_name.get(name)

    def by_slack_user(self, user_id: str) -> ApproverAccount | None:
        return self._by_slack.get(user_id)

    def by_oidc_sub(self, sub: str) -> ApproverAccount | None:
        return self._by_sub.get(sub)

    def by_email(self, email: str) -> ApproverAccount | None:
        return self._by_email.get(email.casefold())

    def accounts(self) -> list[ApproverAccount]:
        return list(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

"""Which approver a verified token speaks for, and in which groups, under ``web.sso``.

Pure: the token was verified before it gets here. ``match: sub`` looks the ``sub`` claim up in
``approvers.<name>.oidc_sub``; ``match: email`` looks the ``email`` claim up in
``approvers.<name>.email`` (case-insensitively), refusing an address the provider marks
``email_verified: false``. The person's groups are the configured ones plus every broker group
whose provider group is listed in the ``groups_claim`` claim.

The session fingerprint ties a sign-on session to the mapping it was made under: editing the
approver's ``oidc_sub`` or ``email`` ends the sessions made under the old value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.approvals.approvers import ApproverAccount, ApproverDirectory
from broker.config.sso import SsoSettings

CREDENTIAL_PREFIX = "oidc:"


@dataclass(frozen=True, slots=True)
class SsoMatch:
    account: ApproverAccount | None
    groups: frozenset[str] = frozenset()
    """Broker groups the provider vouches for, beyond the account's configured ones."""
    refusal: str | None = None
    """Why nobody matched, for the page and the log; None when `account` is set."""


def match_claims(claims: Mapping[str, Any], directory: ApproverDirectory, settings: SsoSettings) -> SsoMatch:
    if settings.match == "email":
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            return SsoMatch(None, refusal="the identity provider sent no e-mail address")
        if claims.get("email_verified") is False:
            return SsoMatch(None, refusal=f"the identity provider has not verified {email}")
        account = directory.by_email(email)
        who = email
    else:
        sub = claims.get("sub")
        account = directory.by_oidc_sub(sub) if isinstance(sub, str) else None
        who = f"subject {sub}"
    if account is None:
        return SsoMatch(None, refusal=f"{who} is not an approver of this broker")
    return SsoMatch(account, groups=provider_groups(claims, settings))


def provider_groups(claims: Mapping[str, Any], settings: SsoSettings) -> frozenset[str]:
    if settings.groups_claim is None or not settings.groups:
        return frozenset()
    listed = claims.get(settings.groups_claim)
    if isinstance(listed, str):
        listed = listed.split()
    if not isinstance(listed, list):
        return frozenset()
    held = {entry for entry in listed if isinstance(entry, str)}
    return frozenset(group for group, provider_group in settings.groups.items() if provider_group in held)


def possible_groups(account: ApproverAccount, settings: SsoSettings | None) -> frozenset[str]:
    """Every broker group the provider could vouch for `account` in: for the start-up check that
    a quorum is reachable, which must count members the provider alone makes."""
    if settings is None or credential_of(account, settings) is None:
        return frozenset()
    return frozenset(settings.groups)


def credential_of(account: ApproverAccount, settings: SsoSettings) -> str | None:
    """The session credential for a sign-on as `account`; None when the account cannot sign on."""
    matched_by = account.email.casefold() if settings.match == "email" and account.email else None
    if settings.match == "sub":
        matched_by = account.oidc_sub
    if matched_by is None:
        return None
    return CREDENTIAL_PREFIX + hashlib.sha256(matched_by.encode("utf-8")).hexdigest()[:16]

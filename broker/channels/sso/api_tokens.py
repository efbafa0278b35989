"""Approvers on the decisions API and the CLI with their identity provider's access tokens.

Beside the approver tokens of the configuration, ``/api/approvals`` and ``/api/grants`` accept a
JWT access token from the single sign-on provider whose ``aud`` is ``web.sso.api_audience``. It
is verified as broker.channels.sso.provider describes, and mapped to an approver exactly as the
inbox maps an ID token (broker.channels.sso.identity), groups included. Any failure, the
provider being unreachable included, is a refusal with the reason (the API answers 401) and a
log line: a token that cannot be verified decides nothing.
"""

from __future__ import annotations

import logging

from broker.approvals.approvers import ApproverDirectory
from broker.approvals.model import Approver
from broker.channels.sso.identity import match_claims
from broker.channels.sso.provider import IdentityProvider, SsoError

logger = logging.getLogger(__name__)


class SsoApproverTokens:
    def __init__(self, provider: IdentityProvider, directory: ApproverDirectory) -> None:
        self._provider = provider
        self._directory = directory

    @staticmethod
    def applies_to(token: str) -> bool:
        """Only JWT-shaped tokens are tried: configured approver tokens are looked up first."""
        return token.count(".") == 2

    async def approver(self, token: str) -> Approver | str:
        """The approver the token speaks for, or why it speaks for nobody."""
        try:
            claims = await self._provider.verify_access_token(token)
        except SsoError as exc:
            logger.warning("decisions API: identity provider token refused: %s", exc)
            return f"the identity provider token was refused: {exc}"
        matched = match_claims(claims, self._directory, self._provider.settings)
        if matched.account is None:
            logger.warning("decisions API: identity provider token refused: %s", matched.refusal)
            return f"the identity provider token was refused: {matched.refusal}"
        return Approver(matched.account.name, matched.account.groups | matched.groups)

"""The one error the credentials raise: no credential could be made for a call, so it is not sent."""

from __future__ import annotations


class CredentialError(Exception):
    """The upstream's credential for this call could not be made (token endpoint down or refusing,
    a claim a header template needs is missing, a value that cannot go into a header). The
    connection turns it into `UpstreamUnavailable`: the call was not sent."""

"""Where a state-changing request to the inbox came from: cross-site ones are refused before anything else.

The CSRF token (broker.channels.web.sessions) already proves a form came from one of our pages;
this check is the browser's own word on it, asked first, so a request another site makes the
browser send is refused even if that site somehow held a valid token. Every POST, PUT, PATCH and
DELETE of the inbox (deciding, signing in, signing out) passes through `OriginCheck.refusal`:

1. ``Sec-Fetch-Site`` present: it must be ``same-origin``, or ``none`` (the person typed or
   bookmarked the address). ``same-site`` is refused too: a sibling subdomain is another origin.
2. ``Origin`` present: it must be this inbox's own origin, ``scheme://host[:port]`` with default
   ports dropped. ``Origin: null`` (sandboxed frames, ``data:`` pages, some redirects) is refused.
3. Neither header (old browsers, curl, scripts): nothing to check here; the CSRF token decides.

Both headers are set by the browser and cannot be set by a page's script, so an attacking page
cannot lie in them; a non-browser client can, but it has no victim's cookie to ride on.

Our own origin is the scheme of the connection and its ``Host`` header. Behind a reverse proxy
these are the proxy's view; when the TCP peer is one of ``web.trusted_proxies`` (as for the trusted
user header and Secure cookies), ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` replace them
(first value of a list: what the browser asked for). A proxy that is not listed is not believed,
so a TLS-terminating proxy must be listed or every browser decision is refused with a message
saying so. ``Forwarded`` (RFC 7239) and ``X-Forwarded-Port`` are not read.

The decisions API (``/api/approvals``, broker.channels.api) needs none of this: it authenticates
with a bearer token in the ``Authorization`` header, which a browser never adds by itself, and
sets no cookie.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.requests import Request

logger = logging.getLogger(__name__)

STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class OriginCheck:
    """Refuses state-changing requests a browser sent on another site's behalf.

    `from_trusted_proxy` says whether the request's TCP peer is a configured proxy whose
    forwarded headers are believed (`WebSignin.from_trusted_proxy`).
    """

    def __init__(self, from_trusted_proxy: Callable[[Request], bool]) -> None:
        self._from_trusted_proxy = from_trusted_proxy

    def refusal(self, request: Request) -> str | None:
        """Why `request` must be refused (and logged so), or None when it may go on to the CSRF check."""
        if request.method not in STATE_CHANGING_METHODS:
            return None
        refusal = self._refusal(request)
        if refusal is not None:
            client = request.client.host if request.client is not None else "unknown"
            logger.warning(
                "web inbox: refused a cross-site %s %s from %s: %s",
                request.method,
                request.url.path,
                client,
                refusal,
            )
        return refusal

    def _refusal(self, request: Request) -> str | None:
        fetch_site = request.headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site.strip().lower() not in ALLOWED_FETCH_SITES:
            return (
                f"the browser says this request was sent from another site (Sec-Fetch-Site: "
                f"{fetch_site[:40]}); the inbox only accepts forms from its own pages"
            )
        origin = request.headers.get("origin")
        if origin is None:
            return None
        own = self.own_origin(request)
        if own is None:
            return "the request's Host header is not a valid host, so its origin cannot be checked"
        claimed = _normalized(origin.strip())
        if claimed is None:
            return (
                f"the browser sent Origin: {origin[:80]} (an opaque or malformed origin); "
                "the inbox only accepts forms from its own pages"
            )
        if claimed != own:
            return (
                f"the request comes from {claimed}, not from this inbox ({own}); if a reverse proxy "
                "serves the inbox under another address, list it in web.trusted_proxies so that "
                "its X-Forwarded-Proto and X-Forwarded-Host are believed"
            )
        return None

    def own_origin(self, request: Request) -> str | None:
        """This inbox's origin as the browser sees it, or None when the Host header is not a host."""
        scheme = request.url.scheme
        host = request.headers.get("host") or request.url.netloc
        if self._from_trusted_proxy(request):
            scheme = _first(request.headers.get("x-forwarded-proto")) or scheme
            host = _first(request.headers.get("x-forwarded-host")) or host
        return _normalized(f"{scheme}://{host}")


def _first(value: str | None) -> str | None:
    if value is None:
        return None
    return value.split(",", 1)[0].strip() or None


def _normalized(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port, or None for anything else
    (``null``, a path, credentials, a bad port)."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.username is not None or parts.password is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def local_target(candidate: str | None) -> str:
    """`next` only ever points back into this site: no scheme, no other host, no protocol-relative URL."""
    if not candidate or not candidate.startswith("/") or candidate.startswith(("//", "/\\")):
        return "/"
    if any(ord(char) < 0x20 for char in candidate):
        return "/"
    return candidate

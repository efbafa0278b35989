"""How the broker reaches one HTTP upstream inside a company network: proxy, CA bundle, client certificate.

Per server, beside ``url``::

    "docs": {"url": "https://docs.internal/mcp",
             "proxy": "http://proxy.corp:3128",          # or "none"; default: the environment
             "ca_bundle": "/etc/corp/ca.pem",            # replaces the system's CAs for this upstream
             "client_cert": "/etc/broker/client.pem",    # mTLS; the key may sit in the same file
             "client_key": "/etc/broker/client.key"}

Proxy choice: a ``proxy`` URL wins; ``"none"`` connects directly; otherwise ``HTTPS_PROXY``
(for https upstreams) or ``HTTP_PROXY`` (for http ones), lowercase names first as curl reads them,
unless ``NO_PROXY`` names the host (suffixes, ``host:port``, ``*``). The broker tunnels through the
proxy with ``CONNECT`` for both schemes, so the proxy never sees the upstream's headers or
traffic in clear. Only ``http://`` proxies are supported; ``user:password@`` in the proxy URL is sent
as ``Proxy-Authorization: Basic``.

The upstream's authorization server (``auth``: its metadata and token endpoint) is reached with
the same settings: the same ``ca_bundle`` and client certificate (for an https endpoint), and the
configured ``proxy`` (or ``"none"``); without one, the environment's proxy variables are applied to
the token endpoint's own host. An authorization server whose certificate comes from another CA
than the upstream's needs both CAs in ``ca_bundle``.

Everything is resolved and loaded at startup: one `ssl.SSLContext` per upstream, so a missing or
unreadable file, a key that does not match its certificate, or a proxy URL that cannot work is a
configuration error naming the server and key, never a failure on the first call.
"""

from __future__ import annotations

import base64
import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DIRECT = "none"
"""The ``proxy`` value that connects directly whatever the environment says."""


class NetworkConfigError(ValueError):
    """A network setting cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """An HTTP proxy that tunnels with CONNECT."""

    host: str
    port: int
    authorization: str | None
    """The ``Proxy-Authorization`` value, from credentials in the proxy URL."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UpstreamNetwork:
    proxy: ProxyRoute | None
    ssl_context: ssl.SSLContext | None
    """For https upstreams only; None for http ones."""
    proxy_configured: bool = False
    """The server's own ``proxy`` key chose `proxy` (None for ``"none"``), not the environment; the
    token endpoint then goes the same way, while an environment proxy is chosen for its own host."""


def upstream_network(
    url: str,
    *,
    proxy: str | None,
    ca_bundle: str | None,
    client_cert: str | None,
    client_key: str | None,
    environ: Mapping[str, str],
) -> UpstreamNetwork | None:
    """Resolves and loads the settings of one upstream; raises `NetworkConfigError` naming the key.

    None when there is nothing to set: a direct connection verified against the system's CAs."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    if not secure:
        for key, value in (
            ("ca_bundle", ca_bundle),
            ("client_cert", client_cert),
            ("client_key", client_key),
        ):
            if value is not None:
                raise NetworkConfigError(f"'{key}' applies only to an https:// url")
    if client_key is not None and client_cert is None:
        raise NetworkConfigError("'client_key' needs a 'client_cert'")
    route = _proxy_route(parts.scheme, parts.hostname or "", parts.port, proxy, environ)
    if route is None and ca_bundle is None and client_cert is None and proxy is None:
        return None
    return UpstreamNetwork(
        proxy=route,
        ssl_context=_ssl_context(ca_bundle, client_cert, client_key) if secure else None,
        proxy_configured=proxy is not None,
    )


def _proxy_route(
    scheme: str, host: str, port: int | None, configured: str | None, environ: Mapping[str, str]
) -> ProxyRoute | None:
    if configured is not None:
        if configured == DIRECT:
            return None
        return _parse_proxy(configured, "'proxy'")
    names = ("https_proxy", "HTTPS_PROXY") if scheme == "https" else ("http_proxy", "HTTP_PROXY")
    for name in names:
        value = environ.get(name)
        if value:
            break
    else:
        return None
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    if bypasses_proxy(host, port or (443 if scheme == "https" else 80), no_proxy):
        return None
    return _parse_proxy(value, f"environment variable {name}")


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` names `host`: ``*``, a name or domain suffix (``.corp`` or ``corp``),
    an address or network (``10.0.0.0/8``), each optionally with ``:port``."""
    host = host.lower().strip("[]")
    for entry in no_proxy.split(","):
        entry = entry.strip().lower()
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if _has_port(entry) else (entry, "", "")
        if not name or (entry_port and entry_port != str(port)):
            continue
        name = name.strip("[]").lstrip(".")
        if host == name or host.endswith("." + name) or _in_network(host, name):
            return True
    return False


def _has_port(entry: str) -> bool:
    head, colon, tail = entry.rpartition(":")
    return bool(colon) and tail.isdigit() and (head.endswith("]") or ":" not in head)


def _in_network(host: str, name: str) -> bool:
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False)
    except ValueError:
        return False


def _parse_proxy(value: str, origin: str) -> ProxyRoute:
    # curl and httpx accept a bare host:port and mean http.
    parts = urlsplit(value if "://" in value else f"http://{value}")
    if parts.scheme != "http" or not parts.hostname:
        raise NetworkConfigError(f"{origin} must be an http:// proxy URL, got {value!r}")
    try:
        port = parts.port or 80
    except ValueError:
        raise NetworkConfigError(f"{origin} has an invalid port: {value!r}") from None
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return ProxyRoute(host=parts.hostname, port=port, authorization=authorization)


def _ssl_context(ca_bundle: str | None, client_cert: str | None, client_key: str | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise NetworkConfigError(f"'ca_bundle' {ca_bundle!r} cannot be loaded: {_reason(exc)}") from None
    if client_cert is not None:
        try:
            context.load_cert_chain(client_cert, client_key)
        except (OSError, ssl.SSLError) as exc:
            files = client_cert if client_key is None else f"{client_cert} with {client_key}"
            raise NetworkConfigError(f"'client_cert' cannot be loaded ({files}): {_reason(exc)}") from None
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__

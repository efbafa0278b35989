"""Fetching the tool lists the catalogue classifies: one short-lived connection to each upstream."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from broker.catalogue.model import CatalogueTool
from broker.proxy.upstream.pool import UpstreamPool
from broker.proxy.upstream.spec import ServerSpec


@dataclass(frozen=True, slots=True)
class ScanResult:
    tools: list[CatalogueTool]
    failures: dict[str, str]
    """Servers that could not be listed, with the reason."""

    @property
    def multiple_servers(self) -> bool:
        return len({tool.server for tool in self.tools} | set(self.failures)) > 1


async def scan_servers(
    servers: Mapping[str, ServerSpec], *, environ: Mapping[str, str], timeout: float = 30.0
) -> ScanResult:
    """Connects to every server at once and returns whatever tool lists arrived within `timeout`."""
    pool = UpstreamPool(servers, environ=environ, connect_timeout=timeout)
    async with pool:
        await pool.wait_ready(timeout)
        # The pool rewrites names to the exposed (possibly server-qualified) form; the catalogue
        # classifies the upstream's own name and qualifies it itself where it has to.
        tools = [
            CatalogueTool(
                server=tool.server,
                name=tool.name,
                exposed_name=tool.exposed_name,
                definition={**tool.definition, "name": tool.name},
            )
            for tool in pool.tools()
        ]
        failures = {
            status.name: status.last_error or status.state
            for status in pool.status()
            if status.state != "connected"
        }
    return ScanResult(tools=tools, failures=failures)

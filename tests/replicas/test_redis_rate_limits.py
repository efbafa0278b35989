"""Replicas configured with `rate_limits: {backend: redis}` count an agent's calls together."""

from __future__ import annotations

import anyio
import pytest

from tests.replicas.cluster import running_cluster, text_of
from tests.replicas.conftest import REDIS_URL, fresh_database

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.redis]

POLICY = """
version: "1"
default: deny
rules:
  - tool: get_ticker
    action: allow
    rate_limit: {max: 4, window: 600}
"""


async def test_calls_spread_over_replicas_are_limited_in_total(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    config = {"rate_limits": {"backend": "redis", "redis_url": REDIS_URL}}
    async with (
        fresh_database() as url,
        running_cluster(
            tmp_path_factory.mktemp("redis"), url, policy=POLICY, replicas=2, config=config
        ) as cluster,
    ):
        with anyio.fail_after(30, reason=cluster.logs()):
            async with cluster.agent_client() as agent:
                answers = [
                    await agent.call(cluster.replicas[turn % 2], "get_ticker", {"symbol": "SOLUSD"})
                    for turn in range(9)
                ]
    assert [answer["isError"] for answer in answers] == [False] * 4 + [True] * 5, [
        text_of(a) for a in answers
    ]
    assert all(text_of(answer).startswith("Rate limit exceeded") for answer in answers[4:])

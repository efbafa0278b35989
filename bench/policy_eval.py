"""Micro-benchmark of Policy.decide on a policy the size of a large real deployment.

Generates a policy with one rule for each of 1,318 tools (named like the tools of exchange
and chain MCP servers), plus globs, agent-scoped rules and conditional rules, then times
`decide()` for a mix of calls:

    exact        a tool with its own rule
    glob         a tool only a glob covers
    default      a tool no rule covers (falls through to ``default``)
    conditional  a tool whose rules carry ``when`` conditions (half the calls satisfy them)
    agent        a tool whose rules are scoped by ``agents``

Warm numbers are for calls after the per-tool candidate cache is filled; cold numbers are
each distinct name's first call on a freshly loaded policy. Per-call times come from
`time.perf_counter_ns` around each call minus the timer's own overhead; "loop mean" is the
total time of a tight loop divided by the calls, with no per-call timer at all.

    python bench/policy_eval.py [--iterations N] [--max-mean-us 5.0]

Exits 1 when the warm loop mean over the whole mix exceeds --max-mean-us.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.policy import Policy, load_policy

TOOL_COUNT = 1318
SERVERS = ("exchange", "chain", "wallet")
AGENTS = ("trading-bot", "portfolio-eu", "research-agent", "chat-bot")

Call = tuple[str, str | None, str | None, dict[str, Any] | None]


def tool_names(count: int) -> list[str]:
    """Deterministic, realistic names: binance_us_cust_cancel_order, get_token_price, transfer_erc20, ..."""
    prefixes = [
        "binance_us_cust",
        "binance_us",
        "coinbase_adv",
        "kraken",
        "uniswap_v3",
        "aave_v3",
        "evm",
        "solana",
    ]
    verbs = [
        "get",
        "list",
        "place",
        "cancel",
        "amend",
        "transfer",
        "approve",
        "swap",
        "stake",
        "unstake",
        "query",
    ]
    objects = [
        "order",
        "orders",
        "open_orders",
        "balance",
        "balances",
        "ticker",
        "token_price",
        "erc20",
        "nft",
        "position",
        "positions",
        "deposit_address",
        "withdrawal",
        "trade_history",
        "fee_rate",
        "kline",
        "order_book",
        "pool",
        "liquidity",
        "allowance",
        "gas_price",
        "block",
        "transaction",
        "account",
    ]
    names: list[str] = []
    seen: set[str] = set()
    for verb in verbs:
        for obj in objects:
            for candidate in (f"{verb}_{obj}", *(f"{prefix}_{verb}_{obj}" for prefix in prefixes)):
                if candidate not in seen:
                    seen.add(candidate)
                    names.append(candidate)
    random.Random(1318).shuffle(names)
    if len(names) < count:
        raise SystemExit(f"name generator yields only {len(names)} names, need {count}")
    return names[:count]


@dataclass
class Workload:
    policy_text: str
    calls: dict[str, list[Call]]


def build_workload(iterations: int) -> Workload:
    rng = random.Random(42)
    # Every one of the 1,318 tools has its own rule; 318 more names exist upstream with no rule of their own.
    names = tool_names(TOOL_COUNT + 318)
    ruled, rest = names[:TOOL_COUNT], names[TOOL_COUNT:]
    rules: list[dict[str, Any]] = []
    conditional: list[str] = []
    scoped: list[str] = []
    for index, name in enumerate(ruled):
        if name.startswith(("cancel", "binance_us_cust_cancel")):
            rules.append(
                {"tool": name, "action": "require_approval", "timeout": "5m", "approvers": ["@leads"]}
            )
        elif "withdraw" in name or name.startswith("transfer"):
            rules.append({"tool": name, "action": "deny", "reason": "money movement is never automated"})
        else:
            rules.append({"tool": name, "action": "allow", "rate_limit": {"max": 60, "window": "1m"}})
        if index % 20 == 0:
            conditional.append(name)
            rules.append(
                {
                    "tool": name,
                    "when": {"args.quantity": {"gt": 100}, "args.symbol": {"matches": "[A-Z]{2,10}USDT"}},
                    "action": "require_approval",
                }
            )
        elif index % 20 == 7:
            scoped.append(name)
            rules.append({"tool": name, "agents": ["trading-bot", "portfolio-*"], "action": "allow"})
    # The tools without their own rule: most fall to globs, some to the default.
    globs = [
        "get_*",
        "list_*",
        "query_*",
        "kraken_*",
        "solana_*",
        "evm_*",
        "*_kline",
        "*_order_book",
        "exchange__*",
    ]
    for pattern in globs:
        rules.append({"tool": pattern, "action": "allow", "rate_limit": {"max": 120, "window": 60}})
    rules.append({"tool": "*_withdrawal", "action": "deny"})
    rules.append({"tool": "aave_v3_*", "agents": ["research-agent"], "action": "allow"})
    document = {"version": "1", "default": "deny", "hide": ["admin_*", "*_debug"], "rules": rules}
    policy_text = json.dumps(document, indent=1)

    policy = load_policy(policy_text)
    globbed = [name for name in rest if policy.decide(name).rule != "default"]
    defaulted = [name for name in rest if policy.decide(name).rule == "default"]
    defaulted += [f"unknown_tool_{number}" for number in range(64)]

    def calls_for(pool: Sequence[str], with_arguments: bool = False) -> list[Call]:
        chosen: list[Call] = []
        for _ in range(iterations):
            name = rng.choice(pool)
            server = rng.choice((None, *SERVERS))
            agent = rng.choice(AGENTS)
            arguments: dict[str, Any] | None = None
            if with_arguments:
                big = rng.random() < 0.5
                arguments = {
                    "quantity": rng.choice((150, "250")) if big else 5,
                    "symbol": "BTCUSDT",
                    "side": "BUY",
                }
            chosen.append((name, server, agent, arguments))
        return chosen

    calls = {
        "exact": calls_for(ruled),
        "glob": calls_for(globbed),
        "default": calls_for(defaulted),
        "conditional": calls_for(conditional, with_arguments=True),
        "agent": calls_for(scoped),
    }
    mix = [call for group in calls.values() for call in group[: iterations // len(calls)]]
    rng.shuffle(mix)
    calls["mix"] = mix
    return Workload(policy_text, calls)


def timer_overhead_ns() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(20_000):
        start = clock()
        samples.append(clock() - start)
    return statistics.median(samples)


def timed_calls(policy: Policy, calls: Sequence[Call], overhead: float) -> list[float]:
    decide = policy.decide
    clock = time.perf_counter_ns
    samples: list[float] = []
    append = samples.append
    for tool, server, agent, arguments in calls:
        start = clock()
        decide(tool, server=server, agent=agent, arguments=arguments)
        append(max(clock() - start - overhead, 0.0))
    return samples


def loop_mean_ns(policy: Policy, calls: Sequence[Call]) -> float:
    decide = policy.decide
    start = time.perf_counter_ns()
    for tool, server, agent, arguments in calls:
        decide(tool, server=server, agent=agent, arguments=arguments)
    return (time.perf_counter_ns() - start) / len(calls)


def first_calls(calls: Sequence[Call]) -> Iterator[Call]:
    seen: set[tuple[str, str | None]] = set()
    for call in calls:
        if (call[0], call[1]) not in seen:
            seen.add((call[0], call[1]))
            yield call


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000, help="calls per workload (default 200000)")
    parser.add_argument(
        "--max-mean-us", type=float, default=5.0, help="fail above this warm mean (default 5)"
    )
    options = parser.parse_args(argv)

    workload = build_workload(options.iterations)
    started = time.perf_counter()
    policy = load_policy(workload.policy_text, source="bench.json")
    load_ms = (time.perf_counter() - started) * 1000
    overhead = timer_overhead_ns()
    print(
        f"policy: {len(policy.rules)} rules ({TOOL_COUNT} tools with their own), "
        f"{len(workload.policy_text) / 1024:.0f} KiB JSON, "
        f"loaded in {load_ms:.0f} ms; timer overhead {overhead:.0f} ns (subtracted)"
    )
    print(f"python {sys.version.split()[0]}, {options.iterations} calls per workload\n")

    columns = ("warm loop mean", "warm mean", "warm p99", "cold mean", "cold p99", "cold n")
    widths = (15, 10, 9, 10, 9, 7)
    header = f"{'workload':<12} " + " ".join(
        f"{title:>{width}}" for title, width in zip(columns, widths, strict=True)
    )
    print(header)
    print("-" * len(header))
    warm_mix_mean = 0.0
    for name, calls in workload.calls.items():
        loop_mean_ns(policy, calls)  # fills the candidate cache
        gc.collect()
        loop_mean = loop_mean_ns(policy, calls) / 1000
        warm = timed_calls(policy, calls, overhead)
        fresh = load_policy(workload.policy_text, source="bench.json")
        gc.collect()
        cold = timed_calls(fresh, list(first_calls(calls)), overhead)
        if name == "mix":
            warm_mix_mean = loop_mean
        print(
            f"{name:<12} {loop_mean:>12.2f} us {statistics.fmean(warm) / 1000:>7.2f} us "
            f"{percentile(warm, 0.99) / 1000:>6.2f} us {statistics.fmean(cold) / 1000:>7.2f} us "
            f"{percentile(cold, 0.99) / 1000:>6.2f} us {len(cold):>7}"
        )
    verdict = "OK" if warm_mix_mean <= options.max_mean_us else "TOO SLOW"
    print(f"\nwarm mean over the mix: {warm_mix_mean:.2f} us (limit {options.max_mean_us:g} us): {verdict}")
    return 0 if warm_mix_mean <= options.max_mean_us else 1


if __name__ == "__main__":
    sys.exit(main())

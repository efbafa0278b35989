"""The classifier against a hand-labelled sample of the DeFi fixture.

The labels in fixtures/defi_labels.json were written by judgment, tool by tool, not copied
from classifier output; where judgment and classifier disagree the label stays, and the
measurement below shows the cost.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from broker.catalogue import Category, Risk, ToolClassification, classify_tool

FIXTURES = Path(__file__).with_name("fixtures")

# Clear-cut tools whose labels must match exactly: the design's own examples and the lying annotations.
CORE = (
    "binance_us_cust_cancel_order",
    "binance_us_get_ticker",
    "coinbase_place_limit_order",
    "binance_us_cust_place_order",
    "binance_us_cust_withdraw",
    "okxCancelOrder",
    "okxWithdraw",
    "get_token_price",
    "transfer_erc20",
    "transfer_erc20_polygon",
    "uniswap_swap_exact_tokens",
    "uniswap_get_quote",
    "aave_withdraw",
    "aave_borrow",
    "bridge_tokens",
    "jupiter_swap",
    "get_wallet_balance",
    "get_erc20_allowance",
    "send_transaction",
    "approve_erc20",
    "export_private_key",
    "get_api_key",
    "rotate_credentials",
    "get_seed_phrase",
    "send_telegram_alert",
    "post_slack_message",
    "tweet",
    "run_shell",
    "execute_python",
    "delete_file",
    "drop_table",
    "write_file",
    "read_file",
    "create_price_alert",
    "solana_burn_tokens",
    "convert_currency",
    "market_buy",
    "market_sell",
    "binance_market_sell",
    "balance_transfer",
    "quote_and_swap",
    "market_depth",
    "balance_history",
    "drain_wallet",
    "print_env",
)


def load_fixture() -> dict[tuple[str, str], dict[str, Any]]:
    fixture = json.loads((FIXTURES / "defi_tools.json").read_text())
    return {
        (server["name"], definition["name"]): definition
        for server in fixture["servers"]
        for definition in server["tools"]
    }


def load_labels() -> list[dict[str, str]]:
    labels: list[dict[str, str]] = json.loads((FIXTURES / "defi_labels.json").read_text())["labels"]
    return labels


@pytest.fixture(scope="module")
def labelled() -> list[tuple[dict[str, str], ToolClassification]]:
    definitions = load_fixture()
    return [
        (label, classify_tool(definitions[(label["server"], label["name"])], label["server"]))
        for label in load_labels()
    ]


def test_the_fixture_is_large_and_the_sample_is_substantial() -> None:
    definitions = load_fixture()
    labels = load_labels()

    assert 400 <= len(definitions) <= 700
    assert len(labels) >= 120
    assert len({label["name"] for label in labels}) == len(labels)
    assert all((label["server"], label["name"]) in definitions for label in labels)
    assert {label["category"] for label in labels} == {category.value for category in Category}
    assert all(Risk(label["risk"]) for label in labels)


def test_the_fixture_contains_lying_annotations() -> None:
    definitions = load_fixture()

    assert definitions[("defi", "aave_withdraw")]["annotations"] == {"readOnlyHint": True}
    assert definitions[("devtools", "delete_file")]["annotations"]["readOnlyHint"] is True


def test_the_fixture_regenerates_byte_for_byte() -> None:
    spec = importlib.util.spec_from_file_location("make_defi_tools", FIXTURES / "make_defi_tools.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    regenerated = json.dumps(module.build(), indent=1, sort_keys=True) + "\n"

    assert regenerated == (FIXTURES / "defi_tools.json").read_text()


def test_core_tools_get_exactly_their_labels(
    labelled: list[tuple[dict[str, str], ToolClassification]],
) -> None:
    by_name = {label["name"]: (label, result) for label, result in labelled}
    wrong = []
    for name in CORE:
        label, result = by_name[name]
        if (result.category.value, result.risk.value) != (label["category"], label["risk"]):
            wrong.append(
                f"{name}: labelled {label['category']}/{label['risk']}, got {result.category}/"
                f"{result.risk.value} ({result.reasons[0]})"
            )

    assert not wrong, "\n".join(wrong)


def test_critical_precision_and_recall(
    labelled: list[tuple[dict[str, str], ToolClassification]], capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes: Counter[str] = Counter()
    for label, result in labelled:
        predicted = result.risk is Risk.CRITICAL
        actual = label["risk"] == Risk.CRITICAL.value
        outcomes["tp" if predicted and actual else "fp" if predicted else "fn" if actual else "tn"] += 1
    precision = outcomes["tp"] / (outcomes["tp"] + outcomes["fp"])
    recall = outcomes["tp"] / (outcomes["tp"] + outcomes["fn"])
    exact = sum(
        (result.category.value, result.risk.value) == (label["category"], label["risk"])
        for label, result in labelled
    )
    summary = (
        f"critical class over {len(labelled)} labelled tools: precision {precision:.3f} "
        f"({outcomes['tp']}/{outcomes['tp'] + outcomes['fp']}), recall {recall:.3f} "
        f"({outcomes['tp']}/{outcomes['tp'] + outcomes['fn']}); exact category+risk {exact}/{len(labelled)}"
    )
    with capsys.disabled():
        print(f"\n{summary}")

    assert precision >= 0.9, summary
    assert recall >= 0.9, summary

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from broker.catalogue import (
    CatalogueTool,
    Category,
    Risk,
    ToolDefinitionError,
    classify_tool,
    classify_tools,
)

FIXTURES = Path(__file__).with_name("fixtures")


def tool(name: str, description: str = "", properties: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    schema = {"type": "object", "properties": {prop: {"type": "string"} for prop in properties}}
    return {"name": name, "description": description, "inputSchema": schema, **extra}


@pytest.mark.parametrize(
    ("name", "category", "risk"),
    [
        ("get_token_price", Category.READ_ONLY, Risk.LOW),
        ("list_pools", Category.READ_ONLY, Risk.LOW),
        ("fetch_ohlcv", Category.READ_ONLY, Risk.LOW),
        ("create_user", Category.WRITE, Risk.MEDIUM),
        ("update_profile", Category.WRITE, Risk.MEDIUM),
        ("place_order", Category.FINANCIAL, Risk.CRITICAL),
        ("binance_us_cust_cancel_order", Category.DESTRUCTIVE, Risk.CRITICAL),
        ("cancel_all_orders", Category.DESTRUCTIVE, Risk.CRITICAL),
        ("delete_file", Category.DESTRUCTIVE, Risk.HIGH),
        ("drop_table", Category.DESTRUCTIVE, Risk.HIGH),
        ("transfer_erc20", Category.FINANCIAL, Risk.CRITICAL),
        ("withdraw", Category.FINANCIAL, Risk.CRITICAL),
        ("withdrawFunds", Category.FINANCIAL, Risk.CRITICAL),
        ("send_transaction", Category.FINANCIAL, Risk.CRITICAL),
        ("swap_exact_tokens_for_eth", Category.FINANCIAL, Risk.CRITICAL),
        ("bridge-tokens", Category.FINANCIAL, Risk.CRITICAL),
        ("send_email", Category.EXTERNAL_COMMUNICATION, Risk.HIGH),
        ("post_message", Category.EXTERNAL_COMMUNICATION, Risk.HIGH),
        ("tweet", Category.EXTERNAL_COMMUNICATION, Risk.HIGH),
        ("run_shell", Category.CODE_EXECUTION, Risk.CRITICAL),
        ("execute_python", Category.CODE_EXECUTION, Risk.CRITICAL),
        ("eval", Category.CODE_EXECUTION, Risk.CRITICAL),
        ("get_api_key", Category.CREDENTIALS, Risk.CRITICAL),
        ("getAPIKey", Category.CREDENTIALS, Risk.CRITICAL),
        ("rotate_credentials", Category.CREDENTIALS, Risk.CRITICAL),
        ("export_private_key", Category.CREDENTIALS, Risk.CRITICAL),
    ],
)
def test_the_examples_from_the_design(name: str, category: Category, risk: Risk) -> None:
    result = classify_tool(tool(name), "some-server")

    assert (result.category, result.risk) == (category, risk), result.reasons
    assert result.server == "some-server"
    assert result.name == name


@pytest.mark.parametrize(
    "name",
    [
        "get_swap_quote",
        "uniswap_swap_quote",
        "transfer_history",
        "estimate_withdraw_fee",
        "get_close_price",
        "list_withdrawals",
        "get_order_updates",
        "simulate_swap",
        "binance_us_get_order_book",
    ],
)
def test_queries_about_money_stay_read_only(name: str) -> None:
    result = classify_tool(tool(name), "exchange")

    assert (result.category, result.risk) == (Category.READ_ONLY, Risk.LOW), result.reasons


def test_a_read_verb_followed_by_a_write_verb_is_not_a_query() -> None:
    result = classify_tool(tool("get_or_create_user"), "accounts")

    assert (result.category, result.risk) == (Category.WRITE, Risk.MEDIUM)


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("binance_us_cust_cancel_order", "'cancel'"),
        ("coinbaseCancelOrder", "'cancel'"),
        ("kraken-cancel-order", "'cancel'"),
        ("okx.cancel.order", "'cancel'"),
    ],
)
def test_vendor_prefixes_and_naming_styles_are_split_into_words(name: str, token: str) -> None:
    result = classify_tool(tool(name), "exchange")

    assert (result.category, result.risk) == (Category.DESTRUCTIVE, Risk.CRITICAL)
    assert (
        result.reasons[0]
        == f"name token {token} (with 'order') suggests cancelling orders or closing positions"
    )


def test_write_on_a_trading_venue_is_financial_and_says_why() -> None:
    on_exchange = classify_tool(tool("update_watchlist"), "binance")
    elsewhere = classify_tool(tool("update_watchlist"), "notes")

    assert (on_exchange.category, on_exchange.risk) == (Category.FINANCIAL, Risk.HIGH)
    assert "'binance' is a trading venue, so a change there is financial" in on_exchange.reasons
    assert (elsewhere.category, elsewhere.risk) == (Category.WRITE, Risk.MEDIUM)


def test_a_lying_read_only_hint_does_not_make_a_withdrawal_safe() -> None:
    result = classify_tool(tool("aave_withdraw", annotations={"readOnlyHint": True}), "defi")

    assert (result.category, result.risk) == (Category.FINANCIAL, Risk.CRITICAL)
    assert result.reasons[0] == "name token 'withdraw' suggests moving money"
    assert result.reasons[1] == (
        "annotations (readOnlyHint=true) say it only reads: overridden, since name, description or "
        "arguments say financial/critical (annotations are untrusted hints and never lower strong evidence)"
    )


def test_a_read_only_hint_is_believed_when_the_name_only_weakly_suggests_a_write() -> None:
    result = classify_tool(tool("refresh_cache", annotations={"readOnlyHint": True}), "notes")

    assert (result.category, result.risk) == (Category.READ_ONLY, Risk.LOW)
    assert result.reasons[0] == (
        "annotations (readOnlyHint=true) say it only reads: accepted, since name and description only "
        "weakly suggest write"
    )


def test_hints_that_raise_risk_are_always_believed() -> None:
    destructive = classify_tool(tool("get_report", annotations={"destructiveHint": True}), "notes")
    writes = classify_tool(tool("get_report", annotations={"readOnlyHint": False}), "notes")

    assert (destructive.category, destructive.risk) == (Category.DESTRUCTIVE, Risk.HIGH)
    assert destructive.reasons[0] == (
        "annotations (destructiveHint=true) say it may destroy data: raises the rating from read_only/low"
    )
    assert (writes.category, writes.risk) == (Category.WRITE, Risk.MEDIUM)
    assert writes.reasons[0].startswith("annotations (readOnlyHint=false) say it changes state: raises")


def test_an_honest_read_only_hint_is_noted() -> None:
    result = classify_tool(tool("get_ticker", annotations={"readOnlyHint": True}), "exchange")

    assert result.risk is Risk.LOW
    assert "annotations (readOnlyHint=true) say it only reads: agrees" in result.reasons


def test_an_irreversible_description_is_destructive_and_critical_when_it_moves_money() -> None:
    plain = classify_tool(tool("finalize_config", "Applies the settings. This is irreversible."), "ops")
    money = classify_tool(tool("finalize_order", "Irreversibly settles the order."), "ops")

    assert (plain.category, plain.risk) == (Category.DESTRUCTIVE, Risk.HIGH)
    assert "description mentions 'irreversible', which suggests a destructive action" in plain.reasons
    assert (money.category, money.risk) == (Category.DESTRUCTIVE, Risk.CRITICAL)
    assert "name token 'order': cancelling or removing orders or funds is critical" in money.reasons


def test_arguments_speak_when_the_name_does_not() -> None:
    payout = classify_tool(tool("process", properties=("amount", "recipient")), "svc")
    command = classify_tool(tool("do_it", properties=("command",)), "svc")
    message = classify_tool(tool("dispatch", properties=("to", "subject", "body")), "svc")
    secret = classify_tool(tool("get_balance", properties=("private_key",)), "svc")

    assert (payout.category, payout.risk) == (Category.FINANCIAL, Risk.CRITICAL)
    assert "argument 'amount' (with 'recipient') suggests money movement to another party" in payout.reasons
    assert (command.category, command.risk) == (Category.CODE_EXECUTION, Risk.CRITICAL)
    assert (message.category, message.risk) == (Category.EXTERNAL_COMMUNICATION, Risk.HIGH)
    assert (secret.category, secret.risk) == (Category.CREDENTIALS, Risk.CRITICAL)


def test_query_arguments_about_money_do_not_raise_a_query() -> None:
    result = classify_tool(tool("get_swap_quote", properties=("amount", "to_address")), "dex")

    assert result.risk is Risk.LOW


def test_argument_parts_are_not_mistaken_for_whole_arguments() -> None:
    result = classify_tool(tool("lookup_country", properties=("country_code",)), "geo")

    assert result.category is Category.READ_ONLY


def test_the_description_opening_decides_when_the_name_has_no_telling_word() -> None:
    read = classify_tool(tool("ticker24", "Returns the 24h ticker. Never places an order."), "exchange")
    unknown = classify_tool(tool("frobnicate", "Frobnicates the widget."), "misc")

    assert (read.category, read.risk) == (Category.READ_ONLY, Risk.LOW)
    assert read.reasons[0] == "description word 'returns' suggests a read-only query"
    assert (unknown.category, unknown.risk) == (Category.WRITE, Risk.MEDIUM)
    assert "unknown effect is treated as state-changing" in unknown.reasons[0]


def test_nested_argument_names_count() -> None:
    definition = {
        "name": "submit",
        "inputSchema": {
            "type": "object",
            "properties": {"payload": {"type": "object", "properties": {"amount": {}, "recipient": {}}}},
        },
    }

    assert classify_tool(definition, "svc").risk is Risk.CRITICAL


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        (["not", "a", "dict"], "must be an object"),
        ({"description": "no name"}, "non-empty string 'name'"),
        ({"name": "   "}, "non-empty string 'name'"),
        ({"name": 42}, "non-empty string 'name'"),
        ({"name": "x" * 600}, "characters long"),
    ],
)
def test_unusable_definitions_raise_a_clear_error(definition: Any, message: str) -> None:
    with pytest.raises(ToolDefinitionError, match=message) as caught:
        classify_tool(definition, "bad-server")

    assert caught.value.server == "bad-server"
    assert "bad-server" in str(caught.value)


def test_malformed_optional_fields_are_ignored_with_a_note() -> None:
    definition = {
        "name": "get_ticker",
        "description": 12,
        "inputSchema": ["symbol"],
        "annotations": {"readOnlyHint": "yes"},
    }

    result = classify_tool(definition, "exchange")

    assert result.category is Category.READ_ONLY
    assert "'description' is not a string and was ignored" in result.reasons
    assert "inputSchema is not an object; arguments were not inspected" in result.reasons
    assert "annotation readOnlyHint is not a boolean and was ignored" in result.reasons


def test_annotations_that_are_not_an_object_are_ignored() -> None:
    result = classify_tool(tool("get_ticker", annotations=["readOnlyHint"]), "exchange")

    assert "annotations are not an object and were ignored" in result.reasons


def test_risk_is_ordered() -> None:
    assert Risk.LOW < Risk.MEDIUM < Risk.HIGH < Risk.CRITICAL
    assert max(Risk.HIGH, Risk.CRITICAL, Risk.LOW) is Risk.CRITICAL
    assert sorted([Risk.CRITICAL, Risk.LOW, Risk.HIGH]) == [Risk.LOW, Risk.HIGH, Risk.CRITICAL]
    assert Risk.HIGH >= Risk.HIGH


def test_classify_tools_keeps_order_and_servers() -> None:
    tools = [
        CatalogueTool("a", "get_ticker", "a__get_ticker", tool("get_ticker")),
        CatalogueTool("b", "withdraw", "b__withdraw", tool("withdraw")),
    ]

    results = classify_tools(tools)

    assert [(item.server, item.name, item.risk) for item in results] == [
        ("a", "get_ticker", Risk.LOW),
        ("b", "withdraw", Risk.CRITICAL),
    ]


def test_every_fixture_tool_gets_a_reason_and_a_dict_form() -> None:
    fixture = json.loads((FIXTURES / "defi_tools.json").read_text())

    for server in fixture["servers"]:
        for definition in server["tools"]:
            result = classify_tool(definition, server["name"])
            assert result.reasons, definition["name"]
            assert json.loads(json.dumps(result.to_dict()))["risk"] == result.risk.value


def test_classifying_two_thousand_tools_is_fast() -> None:
    # The tools page classifies every upstream tool on each load. About 55 us per tool here when
    # idle and twice that on a busy CI machine; the budget leaves room for that and still fails
    # on a slip into something quadratic or a backtracking pattern.
    fixture = json.loads((FIXTURES / "defi_tools.json").read_text())
    pairs = [(definition, server["name"]) for server in fixture["servers"] for definition in server["tools"]]
    batch = (pairs * (2000 // len(pairs) + 1))[:2000]

    timings = []
    for _ in range(3):
        started = time.perf_counter()
        for definition, server in batch:
            classify_tool(definition, server)
        timings.append(time.perf_counter() - started)

    budget_seconds = 2000 * 250e-6
    assert min(timings) < budget_seconds, f"best of three: {min(timings) * 1000:.1f} ms for 2,000 tools"


MARKET_SELL_DESCRIPTION = "Places a market sell order for the given symbol and quantity."


ACTIONS_AFTER_A_READ_NOUN = [
    ("market_buy", Category.FINANCIAL, Risk.CRITICAL),
    ("market_sell", Category.FINANCIAL, Risk.CRITICAL),
    ("spot_market_buy", Category.FINANCIAL, Risk.CRITICAL),
    ("binance_market_sell", Category.FINANCIAL, Risk.CRITICAL),
    ("balance_transfer", Category.FINANCIAL, Risk.CRITICAL),
    ("quote_and_swap", Category.FINANCIAL, Risk.CRITICAL),
]


@pytest.mark.parametrize(
    ("name", "category", "risk"),
    [
        *ACTIONS_AFTER_A_READ_NOUN,
        ("get_balance_and_withdraw", Category.FINANCIAL, Risk.CRITICAL),
        ("drain_wallet", Category.FINANCIAL, Risk.CRITICAL),
        ("format_disk", Category.DESTRUCTIVE, Risk.HIGH),
    ],
)
def test_an_action_anywhere_in_the_name_wins_over_a_read_noun(
    name: str, category: Category, risk: Risk
) -> None:
    result = classify_tool({"name": name}, "desk")

    assert (result.category, result.risk) == (category, risk), result.reasons


@pytest.mark.parametrize(("name", "category", "risk"), ACTIONS_AFTER_A_READ_NOUN)
def test_an_order_description_and_arguments_agree_with_the_action(
    name: str, category: Category, risk: Risk
) -> None:
    result = classify_tool(tool(name, MARKET_SELL_DESCRIPTION, ("symbol", "quantity")), "desk")

    assert (result.category, result.risk) == (category, risk), result.reasons
    assert "argument 'quantity' suggests money movement" in result.reasons


@pytest.mark.parametrize(
    "name",
    ["market_data", "market_depth", "balance_history", "price_feed", "quote_swap", "get_price_and_volume"],
)
def test_names_that_only_name_data_stay_read_only(name: str) -> None:
    result = classify_tool(tool(name), "desk")

    assert (result.category, result.risk) == (Category.READ_ONLY, Risk.LOW), result.reasons


@pytest.mark.parametrize("name", ["format_date", "format_currency"])
def test_formatting_text_is_not_erasing_a_disk(name: str) -> None:
    assert classify_tool(tool(name), "text").category is not Category.DESTRUCTIVE


def test_draining_a_queue_is_destructive_but_not_money() -> None:
    result = classify_tool(tool("drain_queue"), "jobs")

    assert (result.category, result.risk) == (Category.DESTRUCTIVE, Risk.HIGH)


def test_description_and_arguments_count_when_only_a_read_noun_names_the_tool() -> None:
    described = classify_tool(tool("market_data", MARKET_SELL_DESCRIPTION), "desk")
    argued = classify_tool(tool("market_data", properties=("symbol", "quantity")), "desk")
    phrased = classify_tool(tool("price_feed", "Streams prices; also transfers funds on request."), "desk")

    assert (described.category, described.risk) == (Category.FINANCIAL, Risk.CRITICAL), described.reasons
    assert (
        "description word 'order' (with 'places') suggests placing or changing an order, which can fill at once"
        in (described.reasons)
    )
    assert (argued.category, argued.risk) == (Category.FINANCIAL, Risk.HIGH), argued.reasons
    assert (phrased.category, phrased.risk) == (Category.FINANCIAL, Risk.CRITICAL), phrased.reasons


def test_a_telling_description_phrase_counts_even_after_a_read_verb() -> None:
    result = classify_tool(tool("get_quote", "Gets a quote, then signs and broadcasts the swap."), "dex")

    assert (result.category, result.risk) == (Category.FINANCIAL, Risk.CRITICAL), result.reasons


def test_a_negated_description_phrase_does_not_count() -> None:
    result = classify_tool(tool("get_ticker", "Returns the ticker. Never places an order."), "exchange")

    assert (result.category, result.risk) == (Category.READ_ONLY, Risk.LOW)
    assert "description mentions 'places an order' after 'never'; read as a negation" in result.reasons


def test_money_arguments_of_a_read_verb_query_are_noted_not_counted() -> None:
    result = classify_tool(tool("get_swap_quote", properties=("amount",)), "dex")

    assert result.risk is Risk.LOW
    assert any(
        reason.startswith("argument 'amount' suggests money movement, but") for reason in result.reasons
    )


@pytest.mark.parametrize("name", ["get-env", "printEnv", "dump_environment_variables", "get_env_vars"])
def test_environment_variables_are_credentials_whatever_the_annotations_say(name: str) -> None:
    hints = {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False}

    result = classify_tool(tool(name, annotations=hints), "everything")

    assert (result.category, result.risk) == (Category.CREDENTIALS, Risk.CRITICAL), result.reasons
    assert any("overridden" in reason for reason in result.reasons)


def test_deployment_environments_are_not_environment_variables() -> None:
    assert classify_tool(tool("list_environments"), "deploy").risk is Risk.LOW


def test_open_world_writes_are_external_communication() -> None:
    hints = {"readOnlyHint": False, "destructiveHint": False, "openWorldHint": True}

    unknown = classify_tool(tool("frobnicate", annotations=hints), "misc")
    weak = classify_tool(tool("update_record", annotations=hints), "misc")
    closed = classify_tool(tool("update_record", annotations={**hints, "openWorldHint": False}), "misc")

    assert (unknown.category, unknown.risk) == (Category.EXTERNAL_COMMUNICATION, Risk.HIGH)
    assert unknown.reasons[0] == (
        "annotations (readOnlyHint=false, destructiveHint=false, openWorldHint=true) say it changes state "
        "in an open world of outside systems: raises the rating from write/medium"
    )
    assert (weak.category, weak.risk) == (Category.EXTERNAL_COMMUNICATION, Risk.HIGH)
    assert (closed.category, closed.risk) == (Category.WRITE, Risk.MEDIUM)
    assert any("agrees" in reason for reason in closed.reasons)


def test_open_world_without_a_read_only_hint_raises_a_write_but_not_a_read() -> None:
    write = classify_tool(tool("update_record", annotations={"openWorldHint": True}), "misc")
    read = classify_tool(tool("get_record", annotations={"openWorldHint": True}), "misc")

    assert write.category is Category.EXTERNAL_COMMUNICATION
    assert (read.category, read.risk) == (Category.READ_ONLY, Risk.LOW)
    assert "annotations (openWorldHint=true) do not say whether it reads, writes or destroys" in read.reasons


def test_an_idempotent_hint_is_reported_but_never_lowers_risk() -> None:
    hints = {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True}

    result = classify_tool(tool("delete_order", annotations=hints), "exchange")

    assert (result.category, result.risk) == (Category.DESTRUCTIVE, Risk.CRITICAL)
    assert any("idempotentHint=true" in reason for reason in result.reasons)


def test_contradictory_hints_are_read_the_risky_way() -> None:
    result = classify_tool(
        tool("get_report", annotations={"readOnlyHint": True, "destructiveHint": True}), "x"
    )

    assert (result.category, result.risk) == (Category.DESTRUCTIVE, Risk.HIGH)
    assert "contradict each other" in result.reasons[0]


def test_every_fixture_classification_says_what_it_made_of_the_annotations() -> None:
    fixture = json.loads((FIXTURES / "defi_tools.json").read_text())

    for server in fixture["servers"]:
        for definition in server["tools"]:
            result = classify_tool(definition, server["name"])
            if "annotations" in definition:
                hints = [key for key in definition["annotations"] if key.endswith("Hint")]
                mention = next(reason for reason in result.reasons if reason.startswith("annotations ("))
                assert all(f"{key}=" in mention for key in hints), (definition["name"], result.reasons)
            else:
                assert "no MCP annotations; classified from name, description and arguments" in result.reasons


def test_a_phrase_denied_once_still_counts_where_it_is_not_denied() -> None:
    result = classify_tool(
        tool("get_ticker", "Never transfers funds by itself. With confirm=true it transfers funds."), "x"
    )

    assert (result.category, result.risk) == (Category.FINANCIAL, Risk.CRITICAL), result.reasons

"""load_policy: what a valid document compiles to, and every validation error with its exact position."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from broker.policy import (
    Action,
    ApprovalRequirement,
    PolicyError,
    PolicyProblem,
    RateLimit,
    load_policy,
)

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SEED = '{"version": "1", "default": "deny", "hide": ["binance_us_cust_cancel_order"]}'

SPEC_EXAMPLE_YAML = """\
version: "1"
default: deny
hide: ["binance_us_cust_cancel_order", "admin_*"]
rules:
  - tool: "binance_us_cust_cancel_order"
    id: cancel-needs-human
    action: require_approval
    timeout: 300
    on_timeout: deny
    approvers: ["alice", "@trading-leads"]
    channels: ["slack:#approvals", "web"]
    reason: "cancels are irreversible"
  - tool: "get_*"
    action: allow
    rate_limit: {max: 60, window: 60}
  - tool: "place_order"
    agents: ["trading-bot"]
    when: {"args.quantity": {"gt": 100}}
    action: require_approval
  - tool: "withdraw_*"
    action: deny
    reason: "withdrawals are never automated"
"""

SPEC_EXAMPLE_JSON = json.dumps(
    {
        "version": "1",
        "default": "deny",
        "hide": ["binance_us_cust_cancel_order", "admin_*"],
        "rules": [
            {
                "tool": "binance_us_cust_cancel_order",
                "id": "cancel-needs-human",
                "action": "require_approval",
                "timeout": 300,
                "on_timeout": "deny",
                "approvers": ["alice", "@trading-leads"],
                "channels": ["slack:#approvals", "web"],
                "reason": "cancels are irreversible",
            },
            {"tool": "get_*", "action": "allow", "rate_limit": {"max": 60, "window": 60}},
            {
                "tool": "place_order",
                "agents": ["trading-bot"],
                "when": {"args.quantity": {"gt": 100}},
                "action": "require_approval",
            },
            {"tool": "withdraw_*", "action": "deny", "reason": "withdrawals are never automated"},
        ],
    },
    indent=2,
)


def problems(text: str, source: str = "<policy>") -> list[tuple[int, int, str]]:
    with pytest.raises(PolicyError) as caught:
        load_policy(text, source=source)
    return [(problem.line, problem.column, problem.message) for problem in caught.value.problems]


def column_of(text: str, line: int, marker: str) -> int:
    """The 1-based column where `marker` first appears on `line` of `text`."""
    return text.splitlines()[line - 1].index(marker) + 1


def only_problem(text: str, source: str = "<policy>") -> tuple[int, int, str]:
    found = problems(text, source)
    assert len(found) == 1, found
    return found[0]


def rule_doc(*rule_lines: str) -> str:
    """A policy whose single rule starts on line 3; its n-th given line is on line 3 + n."""
    return 'version: "1"\nrules:\n  - tool: place_order\n' + "".join(f"    {line}\n" for line in rule_lines)


# --- valid documents ------------------------------------------------------------------------------


def test_the_seed_document_loads_unchanged() -> None:
    policy = load_policy(SEED, source="seed.json")
    assert policy.default is Action.DENY
    assert policy.hidden_patterns == ("binance_us_cust_cancel_order",)
    assert policy.rules == ()
    assert policy.revision == hashlib.sha256(SEED.encode()).hexdigest()[:12]
    assert policy.decide("binance_us_cust_cancel_order").action is Action.HIDE
    assert policy.decide("get_ticker").action is Action.DENY


def test_the_seed_file_in_the_repository_is_the_seed_document() -> None:
    assert (POLICIES / "seed.json").read_text().strip() == SEED
    load_policy((POLICIES / "seed.json").read_text(), source="policies/seed.json")


def test_the_example_exchange_policy_loads_and_means_what_its_comments_say() -> None:
    policy = load_policy((POLICIES / "exchange.yaml").read_text(), source="policies/exchange.yaml")
    decide = policy.decide
    assert decide("get_ticker", server="exchange", agent="anyone").action is Action.ALLOW
    assert decide("get_balances", server="exchange", agent="trading-bot").action is Action.ALLOW
    assert decide("get_balances", server="exchange", agent="portfolio-eu").action is Action.ALLOW
    assert decide("get_balances", server="exchange", agent="chat-bot").action is Action.DENY
    bot = {"server": "exchange", "agent": "trading-bot"}
    assert decide("place_order", **bot, arguments={"quantity": 5, "type": "LIMIT"}).rule == "small-orders"
    assert decide("place_order", **bot, arguments={"quantity": "250"}).rule == "large-orders"
    market = {"quantity": 1, "type": "MARKET", "symbol": "BTCUSDT"}
    assert decide("place_order", **bot, arguments=market).rule == "market-orders"
    # "any market order waits for a human": whatever the symbol and however the type is spelled.
    for order_type, symbol in [("market", "btcusdt"), ("Market", "ETH-EUR"), ("STOP_MARKET", "BTCUSD")]:
        arguments = {"quantity": 1, "type": order_type, "symbol": symbol}
        assert decide("place_order", **bot, arguments=arguments).rule == "market-orders", arguments
    assert decide("place_order", **bot, arguments={"quantity": 1, "type": "LIMIT"}).rule == "small-orders"
    assert decide("place_order", server="exchange", agent="x").rule == "orders-from-other-agents"
    assert decide("binance_us_cust_cancel_order", server="exchange").rule == "cancel-needs-human"
    assert decide("withdraw", server="exchange", agent="trading-bot").rule == "no-withdrawals"
    assert decide("admin_rotate_keys", server="exchange").action is Action.HIDE
    assert decide("debug_dump", server="exchange").action is Action.HIDE
    assert decide("debug_dump", server="other").action is Action.DENY
    assert decide("transfer_erc20", server="exchange").rule == "default"


@pytest.mark.parametrize(("text", "source"), [(SPEC_EXAMPLE_YAML, "p.yaml"), (SPEC_EXAMPLE_JSON, "p.json")])
def test_the_documented_example_compiles_the_same_from_yaml_and_json(text: str, source: str) -> None:
    policy = load_policy(text, source=source)
    assert policy.hidden_patterns == ("binance_us_cust_cancel_order", "admin_*")
    cancel, getters, place, withdraw = policy.rules
    assert cancel.name == "cancel-needs-human"
    assert cancel.id == "cancel-needs-human"
    assert cancel.action is Action.REQUIRE_APPROVAL
    assert cancel.reason == "cancels are irreversible"
    assert cancel.approval == ApprovalRequirement(
        timeout_seconds=300.0,
        on_timeout="deny",
        approvers=("alice", "@trading-leads"),
        channels=("slack:#approvals", "web"),
    )
    assert getters.name == "rules[1] 'get_*'"
    assert getters.rate_limit == RateLimit(max_calls=60, window_seconds=60.0)
    assert getters.reason == "allowed by policy"
    assert place.agents is not None
    assert place.agents.patterns == ("trading-bot",)
    assert [condition.describe() for condition in place.conditions] == ["args.quantity gt 100"]
    assert place.approval == ApprovalRequirement()
    assert withdraw.reason == "withdrawals are never automated"
    tool_lines = [number for number, line in enumerate(text.splitlines(), 1) if "tool" in line]
    # A rule's line is where its mapping starts: the "- tool:" line in YAML, the "{" above "tool" in JSON.
    assert [rule.line for rule in policy.rules] == (
        tool_lines if source == "p.yaml" else [number - 1 for number in tool_lines]
    )


def test_mapping_form_rules_with_bodies_and_action_shorthand() -> None:
    policy = load_policy(
        'version: "1"\n'
        "rules:\n"
        '  "get_*": allow\n'
        "  place_order:\n"
        "    action: require_approval\n"
        "    timeout: 5m\n"
        "  withdraw_*: {action: deny, reason: never}\n"
    )
    getters, place, withdraw = policy.rules
    assert (getters.tool, getters.action, getters.name, getters.line) == (
        "get_*",
        Action.ALLOW,
        "rules[0] 'get_*'",
        3,
    )
    assert place.approval is not None
    assert place.approval.timeout_seconds == 300.0
    assert (place.name, place.line) == ("rules[1] 'place_order'", 4)
    assert (withdraw.action, withdraw.reason) == (Action.DENY, "never")


def test_default_is_deny_when_left_out_and_allow_when_asked() -> None:
    assert load_policy('version: "1"').default is Action.DENY
    assert load_policy('version: "1"\ndefault: allow').default is Action.ALLOW


def test_empty_hide_and_rules_may_be_left_null() -> None:
    policy = load_policy('version: "1"\nhide:\nrules:\n')
    assert (policy.hidden_patterns, policy.rules) == ((), ())


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("300", 300.0), ("2.5", 2.5), ('"30s"', 30.0), ('"5m"', 300.0), ('"1h30m"', 5400.0)],
)
def test_timeouts_and_windows_accept_numbers_and_durations(written: str, seconds: float) -> None:
    policy = load_policy(
        rule_doc(
            "action: require_approval", f"timeout: {written}", f"rate_limit: {{max: 1, window: {written}}}"
        )
    )
    [rule] = policy.rules
    assert rule.approval is not None
    assert rule.approval.timeout_seconds == seconds
    assert rule.rate_limit == RateLimit(1, seconds)


# --- validation errors, each at its exact position ------------------------------------------------


def test_a_misspelt_key_is_reported_on_its_line_with_a_suggestion() -> None:
    text = rule_doc("id: first", "reason: x", "agents: [a]", "acton: allow")
    assert text.splitlines()[6] == "    acton: allow"
    found = problems(text)
    assert (7, 5, "unknown key 'acton' in rules[0]; did you mean 'action'?") in found
    assert (3, 5, "rules[0] is missing 'action' (allow, deny or require_approval)") in found


def test_a_misspelt_top_level_key_is_reported_with_a_suggestion() -> None:
    assert only_problem('version: "1"\ndefualt: allow\n') == (
        2,
        1,
        "unknown key 'defualt' at the top level; did you mean 'default'?",
    )


def test_version_must_be_the_string_one() -> None:
    line, column, message = only_problem("default: deny\nversion: 1\n")
    assert (line, column) == (2, 10)
    assert 'version must be the string "1"' in message
    assert "got the number 1" in message
    assert only_problem('version: "2"\n') == (
        1,
        10,
        "unsupported policy version '2': this broker reads version \"1\"",
    )
    assert only_problem("default: deny\n")[:2] == (1, 1)
    assert "missing 'version'" in only_problem("default: deny\n")[2]


def test_a_policy_must_be_a_mapping() -> None:
    line, column, message = only_problem("- a\n- b\n")
    assert (line, column) == (1, 1)
    assert message.startswith("a policy must be a mapping")


def test_default_must_be_allow_or_deny() -> None:
    assert only_problem('version: "1"\ndefault: require_approval\n') == (
        2,
        10,
        "default must be 'allow' or 'deny', got the string \"require_approval\"",
    )


def test_hide_must_be_a_list_of_patterns() -> None:
    assert only_problem('version: "1"\nhide: admin_*\n')[:2] == (2, 7)
    assert only_problem('version: "1"\nhide:\n  - a\n  - ""\n') == (4, 5, "hide entry must not be empty")
    assert only_problem('version: "1"\nhide:\n  - a\n  - 3\n')[:2] == (4, 5)


def test_rules_must_be_a_list_or_mapping_of_mappings() -> None:
    assert only_problem('version: "1"\nrules: allow\n')[:2] == (2, 8)
    assert only_problem('version: "1"\nrules:\n  - allow\n')[:2] == (3, 5)
    assert only_problem('version: "1"\nrules:\n  get_x: [allow]\n')[:2] == (3, 10)


def test_missing_or_empty_tool_pattern() -> None:
    assert only_problem('version: "1"\nrules:\n  - action: allow\n') == (3, 5, "rules[0] is missing 'tool'")
    assert only_problem('version: "1"\nrules:\n  - tool: ""\n    action: allow\n') == (
        3,
        11,
        "tool must not be empty",
    )
    assert only_problem('version: "1"\nrules:\n  - tool: " x"\n    action: allow\n')[2] == (
        "tool ' x' has leading or trailing whitespace"
    )
    assert only_problem('version: "1"\nrules:\n  "": allow\n') == (3, 3, "tool pattern must not be empty")


def test_tool_is_not_repeated_inside_a_mapping_form_rule() -> None:
    assert only_problem('version: "1"\nrules:\n  get_x:\n    tool: get_x\n    action: allow\n') == (
        4,
        5,
        "'tool' is already given by the key 'get_x'; remove it",
    )


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (
            "alow",
            "action must be allow, deny or require_approval, got the string \"alow\"; did you mean 'allow'?",
        ),
        ("hide", "'hide' is not a rule action: list the tool under the top-level 'hide' instead"),
        ("true", "action must be allow, deny or require_approval, got true"),
    ],
)
def test_action_must_be_a_rule_action(action: str, message: str) -> None:
    assert only_problem(rule_doc("reason: r", f"action: {action}")) == (5, 13, message)


def test_duplicate_rule_ids_point_at_the_second_use() -> None:
    text = (
        'version: "1"\n'
        "rules:\n"
        "  - {tool: a, action: allow, id: shared}\n"
        "  - {tool: b, action: allow, id: other}\n"
        "  - {tool: c, action: allow, id: shared}\n"
    )
    assert only_problem(text) == (5, 34, "duplicate rule id 'shared' (first used on line 3)")
    assert column_of(text, 5, "shared") == 34


@pytest.mark.parametrize("rule_id", ["default", "rules[0] 'x'", "hide[1]"])
def test_rule_ids_cannot_pose_as_other_decision_names(rule_id: str) -> None:
    text = rule_doc("action: allow", f"id: {json.dumps(rule_id)}")
    assert only_problem(text) == (
        5,
        9,
        f"rule id '{rule_id}' is reserved: decisions use it for something else",
    )


def test_rate_limit_is_refused_on_a_deny_rule() -> None:
    assert only_problem(rule_doc("action: deny", "rate_limit: {max: 5, window: 60}")) == (
        5,
        5,
        "rate_limit only applies to allow and require_approval rules, and this rule denies",
    )


@pytest.mark.parametrize(
    ("rate_limit", "at", "message"),
    [
        (
            "{max: 0, window: 60}",
            "0,",
            "rate_limit.max must be a whole number greater than zero, got the number 0",
        ),
        (
            "{max: -3, window: 60}",
            "-3",
            "rate_limit.max must be a whole number greater than zero, got the number -3",
        ),
        (
            "{max: 1.5, window: 60}",
            "1.5",
            "rate_limit.max must be a whole number greater than zero, got the number 1.5",
        ),
        ("{max: 5, window: 0}", "0}", "rate_limit.window must be greater than zero, got 0"),
        (
            "{max: 5, window: -1m}",
            "-1m",
            "rate_limit.window '-1m' is not a duration: "
            "write a number of seconds or e.g. '30s', '5m', '1h', '1h30m'",
        ),
        ("{max: 5}", "{", "missing 'window' (rate_limit.window, in seconds or like '1m')"),
        ("{window: 5}", "{", "rate_limit is missing 'max' (calls allowed per window)"),
        ("{max: 5, window: 5, burst: 2}", "burst", "unknown key 'burst' in rate_limit"),
        ("{max: 5, windw: 5}", "windw", "unknown key 'windw' in rate_limit; did you mean 'window'?"),
    ],
)
def test_rate_limit_values_are_checked(rate_limit: str, at: str, message: str) -> None:
    text = rule_doc("action: allow", f"rate_limit: {rate_limit}")
    found = problems(text)
    assert (5, column_of(text, 5, at), message) in found


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("timeout: 0", "timeout must be greater than zero, got 0"),
        ("timeout: -5", "timeout must be greater than zero, got -5"),
        (
            "timeout: soon",
            "timeout 'soon' is not a duration: write a number of seconds or e.g. '30s', '5m', '1h', '1h30m'",
        ),
        ("timeout: true", "timeout must be a number of seconds or a duration like '30s', '5m', '1h'"),
        (
            "on_timeout: allow",
            "on_timeout must be 'deny' (the only choice in policy version 1), got the string \"allow\"",
        ),
        ("approvers: alice", 'approvers must be a list, e.g. approvers: ["..."]; got the string "alice"'),
    ],
)
def test_approval_settings_are_checked(line: str, message: str) -> None:
    found = problems(rule_doc("action: require_approval", line))
    assert len(found) == 1
    assert found[0][0] == 5
    assert found[0][2] == message


def test_approval_settings_are_refused_on_other_actions() -> None:
    found = problems(rule_doc("action: allow", "timeout: 30", "approvers: [alice]"))
    assert found == [
        (5, 5, "'timeout' only applies to require_approval rules, and this rule is 'allow'"),
        (6, 5, "'approvers' only applies to require_approval rules, and this rule is 'allow'"),
    ]


def test_agents_must_be_a_non_empty_list_of_names() -> None:
    assert only_problem(rule_doc("action: allow", "agents: trading-bot"))[:2] == (5, 13)
    assert only_problem(rule_doc("action: allow", "agents: []")) == (
        5,
        13,
        "agents must not be empty (leave it out to apply to every agent)",
    )
    assert only_problem(rule_doc("action: allow", "agents: [a, '']"))[:2] == (5, 17)


@pytest.mark.parametrize(
    ("when", "at", "message"),
    [
        (
            '{"args.quantity": {"gte": "100"}}',
            '"100"',
            "'gte' needs a number, got the string \"100\"; write it as a plain number such as 100 "
            "(quoted numbers, and in YAML forms like 1e3, are text)",
        ),
        ('{"args.quantity": {"gt": abc}}', "abc", "'gt' needs a number, got the string \"abc\""),
        (
            '{"args.quantity": {"gt": 1e3}}',
            "1e3",
            "'gt' needs a number, got the string \"1e3\"; write it as a plain number such as 1000.0 "
            "(quoted numbers, and in YAML forms like 1e3, are text)",
        ),
        ('{"args.quantity": {"gt": 1.0e999}}', "1.0e999", "'gt' needs a number, got the string \"1.0e999\""),
        (
            '{"args.quantity": {"lt": .nan}}',
            ".nan",
            ".nan is not a finite number; policies take finite numbers only",
        ),
        (
            '{"args.quantity": {"gt": -.inf}}',
            "-.inf",
            "-.inf is not a finite number; policies take finite numbers only",
        ),
        (
            '{"args.quantity": {"gtee": 1}}',
            '"gtee"',
            "unknown operator 'gtee'; did you mean 'gte'? "
            "(operators: eq, ne, gt, gte, lt, lte, in, not_in, contains, matches, exists)",
        ),
        (
            '{"args.symbol": {"matches": "[A-Z"}}',
            '"[A-Z"',
            "invalid regular expression '[A-Z': unterminated character set at position 0",
        ),
        (
            '{"args.symbol": {"matches": 5}}',
            "5",
            "'matches' needs a regular expression string, got the number 5",
        ),
        ('{"args.symbol": {"in": "BTC"}}', '"BTC"', "'in' needs a list of values, got the string \"BTC\""),
        (
            '{"args.symbol": {"exists": "yes"}}',
            '"yes"',
            "'exists' needs true or false, got the string \"yes\"",
        ),
        (
            '{"quantity": {"gt": 1}}',
            '"quantity"',
            "condition path 'quantity' must start with 'args.' or 'claims.' (e.g. 'args.quantity')",
        ),
        ('{"args..x": {"gt": 1}}', '"args..x"', "condition path 'args..x' has an empty segment"),
        (
            '{"args.x": {}}',
            "{}",
            "'args.x' has no operator "
            "(one of eq, ne, gt, gte, lt, lte, in, not_in, contains, matches, exists)",
        ),
        ('{"args.x": [1, 2]}', "[", "'args.x' needs an operator for a list, e.g. {in: [...]} or {eq: [...]}"),
        (
            "{}",
            "{}",
            'when must be a mapping of argument path to test, e.g. when: {"args.quantity": {"gt": 100}}; '
            "got a mapping",
        ),
    ],
)
def test_conditions_are_checked_at_load_time(when: str, at: str, message: str) -> None:
    text = rule_doc("action: allow", f"when: {when}")
    assert only_problem(text) == (5, column_of(text, 5, at), message)


def test_every_problem_is_reported_at_once_in_file_order() -> None:
    text = (
        "version: 1\n"
        "rules:\n"
        "  - tool: a\n"
        "    action: deny\n"
        "    rate_limit: {max: 1, window: 1}\n"
        "  - tool: b\n"
        "    action: allow\n"
        "    when: {args.x: {bogus: 1}}\n"
        "hidee: []\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(text, source="policies/bad.yaml")
    assert [(problem.line, problem.column) for problem in caught.value.problems] == [
        (1, 10),
        (5, 5),
        (8, 21),
        (9, 1),
    ]
    rendered = str(caught.value).splitlines()
    assert len(rendered) == 4
    assert rendered[0].startswith('policies/bad.yaml:1:10: version must be the string "1"')
    assert rendered[3] == "policies/bad.yaml:9:1: unknown key 'hidee' at the top level; did you mean 'hide'?"


def test_a_policy_json_syntax_error_comes_out_of_load_policy_with_its_line() -> None:
    text = '{\n  "version": "1",\n  "rules": [\n    {"tool": "a", "action": "allow"},\n  ]\n}\n'
    assert only_problem(text, "policy.json") == (5, 3, "invalid JSON: Expecting value")


def test_json_validation_errors_have_positions_too() -> None:
    text = '{\n  "version": "1",\n  "rules": [\n    {"tool": "a", "acton": "allow"}\n  ]\n}\n'
    assert problems(text, "policy.json") == [
        (4, 5, "rules[0] is missing 'action' (allow, deny or require_approval)"),
        (4, 19, "unknown key 'acton' in rules[0]; did you mean 'action'?"),
    ]


def test_policy_problem_renders_as_source_line_column_message() -> None:
    assert str(PolicyProblem("p.yaml", 7, 5, "boom")) == "p.yaml:7:5: boom"


@pytest.mark.parametrize("written", ["1e999", "-1e999", "Infinity", "NaN"])
def test_json_numbers_that_are_not_finite_are_refused_where_they_are(written: str) -> None:
    text = (
        '{\n  "version": "1",\n  "rules": [\n'
        f'    {{"tool": "a", "action": "require_approval", "when": {{"args.qty": {{"gt": {written}}}}}}}\n'
        "  ]\n}\n"
    )
    assert only_problem(text, "policy.json") == (
        4,
        column_of(text, 4, written),
        f"{written} is not a finite number; policies take finite numbers only",
    )


def test_a_hold_budget_is_a_duration_on_approval_rules_only() -> None:
    [rule] = load_policy(rule_doc("action: require_approval", 'hold_budget: "20s"')).rules
    assert rule.approval is not None and rule.approval.hold_budget_seconds == 20.0
    [plain] = load_policy(rule_doc("action: require_approval")).rules
    assert plain.approval is not None and plain.approval.hold_budget_seconds is None

    line, column, message = only_problem(rule_doc("action: require_approval", "hold_budget: soon"))
    assert (line, column) == (5, column_of(rule_doc("", "hold_budget: soon"), 5, "soon"))
    assert "hold_budget 'soon' is not a duration" in message
    line, _, message = only_problem(rule_doc("action: allow", "hold_budget: 5"))
    assert line == 5 and "'hold_budget' only applies to require_approval rules" in message

"""The word sets the catalogue's signals are built from, and the `Signal` row itself.

What critical means (issue 13): one call can irreversibly lose money, positions or control
of keys. Placing, cancelling or replacing an order, closing or exercising a position,
buying or selling, transfers, withdrawals, swaps, bridges, deposits, spending under a
permission, signatures and allowances with the wallet key, exporting or re-keying keys: all
critical, on an exchange as on a chain (a filled order cannot be unfilled). Changing
leverage or margin, claiming, wrapping or launching tokens is high: it changes what later
calls risk, but moves nothing by itself. Reading history, balances and quotes is low, even
on an exchange.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.catalogue.model import Category, Risk


@dataclass(frozen=True, slots=True)
class Signal:
    """One row: any of `terms` suggests `category` at `risk`.

    `needs`: the signal counts only when one of these terms also appears (in the tool name,
    server name or, for argument rows, another argument). `unless`: it does not count when
    one of these appears. `overrides_read`: it counts even when the name reads as a query
    (``get_api_key`` is still about a secret). `also_a_noun`: the term often names the thing
    being read (``get_swap_quote``, ``list_withdrawals``), so it does not stop a name from
    reading as a query. `whole_name`: argument rows only; match whole argument names, not
    their parts (``code`` the argument, not ``country_code``).
    """

    terms: frozenset[str]
    category: Category
    risk: Risk
    meaning: str
    needs: frozenset[str] = frozenset()
    unless: frozenset[str] = frozenset()
    overrides_read: bool = False
    also_a_noun: bool = False
    whole_name: bool = False


def plural_of(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def plurals(words: str) -> frozenset[str]:
    return frozenset(form for word in words.split() for form in (word, plural_of(word)))


def exact(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Names of trading venues and DeFi protocols: a write on one of these is about money.
TRADING_VENUES = exact(
    "binance coinbase kraken bybit okx okex kucoin bitfinex bitstamp gemini huobi htx gateio mexc "
    "bitget deribit alpaca robinhood ibkr tradier etrade schwab exchange trading trader broker brokerage "
    "dex uniswap sushiswap pancakeswap curve balancer aave compound makerdao lido jupiter raydium orca "
    "oneinch 1inch paraswap cowswap gmx dydx hyperliquid morpho eigenlayer rocketpool yearn convex "
    "defi stripe paypal bank banking payments treasury"
)

# Things in a tool name that make a write about orders, trades or funds.
MONEY_OBJECTS = plurals(
    "order trade position leverage margin collateral vault liquidity payment allowance invoice loan"
) | exact("funds money cash")

# Objects of a destructive verb that make it critical: cancelling or removing these loses money or orders.
DESTRUCTIVE_MONEY_OBJECTS = plurals(
    "order trade position fund payment wallet transaction loan stake liquidity vault "
    "withdrawal transfer deposit collateral escrow"
) | exact("funds")

# What a transaction-sending verb may be sending.
SENDABLE_MONEY = plurals(
    "transaction tx txn fund payment eth ether btc bitcoin sol lamport sat satoshi crypto token erc20 "
    "usdc usdt dai coin money cash wire ach sepa remittance raw_transaction"
) | exact("funds")

# Converting these is a trade, not arithmetic.
CONVERTIBLE = TRADING_VENUES | MONEY_OBJECTS | plurals("dust coin token crypto asset balance")

ORDER_VERBS = plurals(
    "place create submit post open modify amend edit update replace execute send add set make"
) | exact("new")

READ_VERBS = plurals(
    "get list fetch read query search find lookup look describe show view check estimate quote simulate "
    "preview calculate calc compute count explain inspect browse monitor track scan analyze analyse "
    "compare validate verify resolve decode parse summarize summarise download export is has can ping "
    "retrieve return provide poll discover detect recommend suggest predict forecast diagnose audit "
    "trace screen rank whoami watch test dry_run"
)

READ_NOUNS = plurals(
    "price quote history balance ticker info information status stat statistics detail fee rate depth "
    "book candle kline ohlcv chart report summary metadata allowance estimate simulation preview "
    "overview analytics apy apr tvl volume gas time timezone timestamp health version address "
    "market pair symbol orderbook spread funding_rate snapshot receipt"
)

SECRETS = plurals(
    "apikey api_key api_secret secret secret_key private_key privkey privatekey password passwd passphrase "
    "mnemonic seed_phrase seedphrase recovery_phrase credential access_token auth_token refresh_token "
    "bearer_token session_token keystore keypair key_pair access_key signing_key totp"
)
# Servers keep API keys and database passwords in their environment; not bare "environment",
# which usually means staging or production.
ENVIRONMENT = exact(
    "env envs environ dotenv envvar envvars env_var env_vars environment_variable environment_variables"
)
# Managing a secret without seeing it: listing labels, reading its permissions, revoking it.
SECRET_MANAGEMENT = plurals("delete remove revoke list permission scope restriction label") | exact("disable")

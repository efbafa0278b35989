"""The words that give a tool away, as data: which category and risk each one suggests, and why.

Each `Signal` row is a set of terms with the category, base risk and the sentence an
operator reads in ``broker tools scan``. The classifier only interprets these tables;
tuning the classifier means editing rows here.

Terms are lower-case words as `broker.catalogue.classify` splits names
(``binance_us_cust_cancelOrder`` -> ``binance us cust cancel order``), plus joined
neighbours (``api_key``, ``private_key``). Plural forms are added when the tables are built.

Why the split between exchange orders (high) and money movement (critical): an order on an
exchange stays inside the account and can usually be cancelled; a transfer, withdrawal,
swap, bridge or signed transaction leaves the account or lands on a chain, where nothing
can be undone.
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


def _plurals(words: str) -> frozenset[str]:
    return frozenset(form for word in words.split() for form in (word, plural_of(word)))


def _exact(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Names of trading venues and DeFi protocols: a write on one of these is about money.
TRADING_VENUES = _exact(
    "binance coinbase kraken bybit okx okex kucoin bitfinex bitstamp gemini huobi htx gateio mexc "
    "bitget deribit alpaca robinhood ibkr tradier etrade schwab exchange trading trader broker brokerage "
    "dex uniswap sushiswap pancakeswap curve balancer aave compound makerdao lido jupiter raydium orca "
    "oneinch 1inch paraswap cowswap gmx dydx hyperliquid morpho eigenlayer rocketpool yearn convex "
    "defi stripe paypal bank banking payments treasury"
)

# Things in a tool name that make a write about orders, trades or funds.
MONEY_OBJECTS = _plurals(
    "order trade position leverage margin collateral vault liquidity payment allowance invoice loan"
) | _exact("funds money cash")

# Objects of a destructive verb that make it critical: cancelling or removing these loses money or orders.
DESTRUCTIVE_MONEY_OBJECTS = _plurals(
    "order trade position fund payment wallet transaction loan stake liquidity vault account "
    "subscription withdrawal transfer deposit collateral escrow"
) | _exact("funds")

# What a transaction-sending verb may be sending.
SENDABLE_MONEY = _plurals(
    "transaction tx txn fund payment eth ether btc bitcoin sol lamport sat satoshi crypto token erc20 "
    "usdc usdt dai coin money cash wire ach sepa remittance raw_transaction"
) | _exact("funds")

# Converting these is a trade, not arithmetic.
_CONVERTIBLE = TRADING_VENUES | MONEY_OBJECTS | _plurals("dust coin token crypto asset balance")

ORDER_VERBS = _plurals(
    "place create submit post open modify amend edit update replace execute send add set make"
) | _exact("new")

READ_VERBS = _plurals(
    "get list fetch read query search find lookup look describe show view check estimate quote simulate "
    "preview calculate calc compute count explain inspect browse monitor track scan analyze analyse "
    "compare validate verify resolve decode parse summarize summarise download export is has can ping "
    "retrieve return provide poll discover detect recommend suggest predict forecast diagnose audit "
    "trace screen rank whoami watch test dry_run"
)

READ_NOUNS = _plurals(
    "price quote history balance ticker info information status stat statistics detail fee rate depth "
    "book candle kline ohlcv chart report summary metadata allowance estimate simulation preview "
    "overview analytics apy apr tvl volume gas time timezone timestamp health version address "
    "market pair symbol orderbook spread funding_rate snapshot receipt"
)

_SECRETS = _plurals(
    "apikey api_key api_secret secret secret_key private_key privkey privatekey password passwd passphrase "
    "mnemonic seed_phrase seedphrase recovery_phrase credential access_token auth_token refresh_token "
    "bearer_token session_token keystore keypair key_pair access_key signing_key totp"
)
# Servers keep API keys and database passwords in their environment; not bare "environment",
# which usually means staging or production.
_ENVIRONMENT = _exact(
    "env envs environ dotenv envvar envvars env_var env_vars environment_variable environment_variables"
)
# Managing a secret without seeing it: listing labels, reading its permissions, revoking it.
_SECRET_MANAGEMENT = _plurals("delete remove revoke list permission scope restriction label") | _exact(
    "disable"
)

NAME_SIGNALS: tuple[Signal, ...] = (
    Signal(
        _SECRETS,
        Category.CREDENTIALS,
        Risk.CRITICAL,
        "suggests handling credentials or secrets",
        unless=_SECRET_MANAGEMENT,
        overrides_read=True,
    ),
    Signal(
        _SECRETS,
        Category.CREDENTIALS,
        Risk.HIGH,
        "suggests managing credentials without revealing them",
        needs=_SECRET_MANAGEMENT,
        overrides_read=True,
    ),
    Signal(
        _ENVIRONMENT,
        Category.CREDENTIALS,
        Risk.CRITICAL,
        "suggests reading or changing environment variables, where servers keep their credentials",
        overrides_read=True,
    ),
    Signal(
        _exact("shell bash zsh powershell eval exec repl subprocess terminal cmd"),
        Category.CODE_EXECUTION,
        Risk.CRITICAL,
        "suggests running commands or code",
        overrides_read=True,
    ),
    Signal(
        _plurals("code python javascript js typescript script command sql snippet notebook cell program"),
        Category.CODE_EXECUTION,
        Risk.CRITICAL,
        "suggests running code",
        needs=_plurals("run execute exec eval evaluate invoke interpret"),
        overrides_read=True,
    ),
    Signal(
        _plurals("install deploy"),
        Category.CODE_EXECUTION,
        Risk.HIGH,
        "suggests installing or deploying code",
    ),
    Signal(
        _exact(
            "transfer transfers withdraw withdraws withdrawal withdrawals swap swaps bridge bridges "
            "borrow borrows repay repays stake stakes unstake unstakes restake mint mints redeem redeems "
            "deposit deposits supply payment payments payout payouts loan loans liquidation flashloan "
            "fund refund refunds charge charges permit tip tips exchange"
        ),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests moving money",
        also_a_noun=True,
    ),
    Signal(
        _exact("pay pays liquidate liquidates sweep zap lend lends remit disburse donate"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests moving money",
    ),
    Signal(
        _exact("drain drains"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests emptying an account or wallet of its funds",
        needs=DESTRUCTIVE_MONEY_OBJECTS | SENDABLE_MONEY | TRADING_VENUES | _plurals("balance pool"),
    ),
    Signal(
        _exact("sign signs"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests signing with wallet keys",
        unless=_exact("in up out"),
    ),
    Signal(
        _exact("approve approves"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests granting a token spending allowance",
        needs=TRADING_VENUES
        | _plurals("token erc20 erc721 nft spl allowance spender usdc usdt dai weth permit2")
        | _exact("spend spending"),
    ),
    Signal(
        _exact("send sends submit broadcast push post execute relay"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests sending a transaction or funds",
        needs=SENDABLE_MONEY,
    ),
    Signal(
        _plurals("contract"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests sending a signed contract transaction",
        needs=_plurals("write execute send interact transact"),
    ),
    Signal(
        _exact("liquidity"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests moving funds into or out of a liquidity pool",
        needs=_plurals("add provide remove supply deposit withdraw increase decrease"),
        also_a_noun=True,
    ),
    Signal(
        _exact("buy buys sell sells"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests an on-chain purchase or sale, which settles immediately",
        needs=_plurals("nft erc20 erc721 spl onchain memecoin") | _exact("dex uniswap jupiter pump"),
    ),
    Signal(
        _exact("for_sale"),
        Category.FINANCIAL,
        Risk.HIGH,
        "suggests offering assets for sale",
        overrides_read=True,
    ),
    Signal(
        _exact("wrap wraps unwrap unwraps"),
        Category.FINANCIAL,
        Risk.HIGH,
        "suggests converting between a coin and its wrapped token",
        also_a_noun=True,
    ),
    Signal(
        _exact("burn burns"),
        Category.DESTRUCTIVE,
        Risk.CRITICAL,
        "suggests destroying tokens for good",
    ),
    Signal(
        _plurals("order trade position leverage offer"),
        Category.FINANCIAL,
        Risk.HIGH,
        "suggests placing or changing an exchange order",
        needs=ORDER_VERBS,
        also_a_noun=True,
    ),
    Signal(
        _exact("buy buys sell sells trade trades claim claims bid bids"),
        Category.FINANCIAL,
        Risk.HIGH,
        "suggests committing funds on a market",
        also_a_noun=True,
    ),
    Signal(
        _exact("rebalance rebalances harvest harvests collect collects delegate delegates"),
        Category.FINANCIAL,
        Risk.HIGH,
        "suggests moving funds between positions",
    ),
    Signal(
        _exact("convert converts"),
        Category.FINANCIAL,
        Risk.HIGH,
        "suggests converting between assets",
        needs=_CONVERTIBLE,
    ),
    Signal(
        _plurals(
            "delete remove drop destroy purge wipe erase truncate cancel revoke terminate kill reset "
            "clear uninstall deregister unregister flush discard abort void rollback overwrite shred "
            "shutdown"
        ),
        Category.DESTRUCTIVE,
        Risk.HIGH,
        "suggests a destructive action",
    ),
    Signal(
        _exact("drain drains nuke nukes"),
        Category.DESTRUCTIVE,
        Risk.HIGH,
        "suggests emptying or destroying something",
    ),
    Signal(
        _exact("format formats reformat reformats"),
        Category.DESTRUCTIVE,
        Risk.HIGH,
        "suggests erasing a disk or volume",
        needs=_plurals("disk drive volume partition device filesystem fs storage ssd hdd usb"),
    ),
    Signal(
        _plurals("close"),
        Category.DESTRUCTIVE,
        Risk.HIGH,
        "suggests closing something for good",
        also_a_noun=True,
    ),
    Signal(
        _plurals("email mail sms tweet message dm post reply share forward invite"),
        Category.EXTERNAL_COMMUNICATION,
        Risk.HIGH,
        "suggests sending messages to people outside the system",
        also_a_noun=True,
    ),
    Signal(
        _exact("http https curl webhook webhooks"),
        Category.EXTERNAL_COMMUNICATION,
        Risk.HIGH,
        "suggests sending data to arbitrary outside services",
        also_a_noun=True,
    ),
    Signal(
        _exact("send sends publish publishes notify notifies announce broadcast retweet"),
        Category.EXTERNAL_COMMUNICATION,
        Risk.HIGH,
        "suggests sending messages to people outside the system",
    ),
    Signal(
        _plurals(
            "create update set add put edit modify save upload insert upsert patch enable disable "
            "configure rename import assign attach detach write unfollow amend replace generate submit "
            "accept reject confirm commit merge init initialize reload refresh unlock invoke perform "
            "apply approve login logout place"
        ),
        Category.WRITE,
        Risk.MEDIUM,
        "suggests changing state",
    ),
    Signal(
        _plurals(
            "register move sync start stop pause resume schedule subscribe unsubscribe tag label link "
            "unlink store record mark follow like vote restore new change complete lock run execute "
            "trigger process"
        ),
        Category.WRITE,
        Risk.MEDIUM,
        "suggests changing state",
        also_a_noun=True,
    ),
    Signal(
        _exact("convert converts"),
        Category.READ_ONLY,
        Risk.LOW,
        "suggests a read-only conversion",
        unless=_CONVERTIBLE,
    ),
    Signal(READ_VERBS, Category.READ_ONLY, Risk.LOW, "suggests a read-only query"),
    Signal(READ_NOUNS, Category.READ_ONLY, Risk.LOW, "names data that is read", also_a_noun=True),
)

ARGUMENT_SIGNALS: tuple[Signal, ...] = (
    Signal(
        _exact(
            "private_key privatekey privkey mnemonic seed_phrase seedphrase secret_key password "
            "passphrase recovery_phrase"
        ),
        Category.CREDENTIALS,
        Risk.CRITICAL,
        "carries a secret",
        overrides_read=True,
    ),
    Signal(
        _exact("command cmd script code sql shell shell_command python_code source_code javascript"),
        Category.CODE_EXECUTION,
        Risk.CRITICAL,
        "suggests running code",
        whole_name=True,
    ),
    Signal(
        _exact("amount quantity qty value_wei lamports sats"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests money movement to another party",
        needs=_exact(
            "to recipient destination receiver beneficiary address dest payee spender to_address wallet"
        ),
    ),
    Signal(
        _exact("amount quantity qty size notional"),
        Category.FINANCIAL,
        Risk.HIGH,
        "suggests money movement",
    ),
    Signal(
        _exact(
            "to recipient recipients email phone phone_number chat_id channel channel_id cc bcc webhook_url"
        ),
        Category.EXTERNAL_COMMUNICATION,
        Risk.HIGH,
        "suggests sending a message",
        needs=_exact("subject body message text content html"),
    ),
)

DESCRIPTION_SIGNALS: tuple[Signal, ...] = (
    Signal(
        frozenset(
            {
                "irreversible",
                "irreversibly",
                "cannot be undone",
                "can't be undone",
                "can not be undone",
                "permanently",
            }
        ),
        Category.DESTRUCTIVE,
        Risk.HIGH,
        "which suggests a destructive action",
        overrides_read=True,
    ),
    Signal(
        frozenset(
            {
                "arbitrary code",
                "arbitrary command",
                "arbitrary commands",
                "arbitrary sql",
                "shell command",
                "shell commands",
                "executes code",
                "execute code",
                "runs code",
                "executes python",
                "executes javascript",
            }
        ),
        Category.CODE_EXECUTION,
        Risk.CRITICAL,
        "which suggests running code",
        overrides_read=True,
    ),
    Signal(
        frozenset(
            {
                "transfers funds",
                "transfer funds",
                "moves funds",
                "sends funds",
                "send funds",
                "withdraws funds",
                "withdraw funds",
                "signs and broadcasts",
                "sign and send",
                "signs and sends",
                "send a transaction",
                "sends a transaction",
                "broadcasts a transaction",
                "broadcasts the transaction",
                "real funds",
                "real money",
            }
        ),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "which suggests moving money",
    ),
    Signal(
        frozenset({"private key", "seed phrase", "mnemonic", "secret key", "recovery phrase"}),
        Category.CREDENTIALS,
        Risk.CRITICAL,
        "which suggests handling secrets",
    ),
    Signal(
        frozenset(
            {
                "places an order",
                "place an order",
                "market order",
                "limit order",
                "executes a trade",
                "execute a trade",
            }
        ),
        Category.FINANCIAL,
        Risk.HIGH,
        "which suggests placing an order",
    ),
    Signal(
        frozenset(
            {
                "sends an email",
                "send an email",
                "sends a message",
                "send a message",
                "posts a message",
                "sends a notification",
                "sends an sms",
            }
        ),
        Category.EXTERNAL_COMMUNICATION,
        Risk.HIGH,
        "which suggests messaging people outside the system",
    ),
)

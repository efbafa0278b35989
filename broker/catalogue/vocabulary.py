"""The words in a tool *name* that give it away, as data: which category and risk each suggests, and why.

Each `Signal` row (see `broker.catalogue.terms`) is a set of terms with the category, base
risk and the sentence an operator reads in ``broker tools scan``. The classifier only
interprets these tables; tuning the classifier means editing rows here, in
`broker.catalogue.terms` (the word sets) and in `broker.catalogue.context_signals`
(arguments and description phrases).

Terms are lower-case words as `broker.catalogue.classify` splits names
(``binance_us_cust_cancelOrder`` -> ``binance us cust cancel order``), plus joined
neighbours (``api_key``, ``private_key``). Plural forms are added when the tables are built.
"""

from __future__ import annotations

from broker.catalogue.model import Category, Risk
from broker.catalogue.terms import (
    CONVERTIBLE,
    DESTRUCTIVE_MONEY_OBJECTS,
    ENVIRONMENT,
    ORDER_VERBS,
    READ_NOUNS,
    READ_VERBS,
    SECRET_MANAGEMENT,
    SECRETS,
    SENDABLE_MONEY,
    TRADING_VENUES,
    Signal,
    exact,
    plurals,
)

NAME_SIGNALS: tuple[Signal, ...] = (
    Signal(
        SECRETS,
        Category.CREDENTIALS,
        Risk.CRITICAL,
        "suggests handling credentials or secrets",
        unless=SECRET_MANAGEMENT,
        overrides_read=True,
    ),
    Signal(
        plurals("publishable_key anon_key public_key"),
        Category.CREDENTIALS,
        Risk.MEDIUM,
        "names keys meant to be public; still keys, so not harmless",
        overrides_read=True,
    ),
    Signal(
        SECRETS,
        Category.CREDENTIALS,
        Risk.HIGH,
        "suggests managing credentials without revealing them",
        needs=SECRET_MANAGEMENT,
        overrides_read=True,
    ),
    Signal(
        ENVIRONMENT,
        Category.CREDENTIALS,
        Risk.CRITICAL,
        "suggests reading or changing environment variables, where servers keep their credentials",
        overrides_read=True,
    ),
    Signal(
        exact("shell bash zsh powershell eval exec repl subprocess terminal cmd"),
        Category.CODE_EXECUTION,
        Risk.CRITICAL,
        "suggests running commands or code",
        overrides_read=True,
    ),
    Signal(
        plurals("code python javascript js typescript script command sql snippet notebook cell program"),
        Category.CODE_EXECUTION,
        Risk.CRITICAL,
        "suggests running code",
        needs=plurals("run execute exec eval evaluate invoke interpret"),
        overrides_read=True,
    ),
    Signal(
        plurals("install deploy"),
        Category.CODE_EXECUTION,
        Risk.HIGH,
        "suggests installing or deploying code",
    ),
    Signal(
        exact(
            "transfer transfers withdraw withdraws withdrawal withdrawals swap swaps bridge bridges "
            "borrow borrows repay repays stake stakes unstake unstakes restake mint mints redeem redeems "
            "deposit deposits supply payment payments payout payouts loan loans liquidation flashloan "
            "fund refund refunds charge charges permit tip tips"
        ),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests moving money",
        also_a_noun=True,
    ),
    Signal(
        exact("exchange exchanges"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests exchanging one asset for another",
        # "exchange" is also the venue ("clear_exchange_cache"): only with something to exchange.
        needs=SENDABLE_MONEY | (TRADING_VENUES - exact("exchange")) | plurals("asset currency"),
        also_a_noun=True,
    ),
    Signal(
        exact("spend spends"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests spending funds",
        # Giving up or listing a spending permission spends nothing.
        unless=plurals("revoke remove delete list"),
        also_a_noun=True,
    ),
    Signal(
        exact("pay pays liquidate liquidates sweep zap lend lends remit disburse donate"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests moving money",
    ),
    Signal(
        exact("drain drains"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests emptying an account or wallet of its funds",
        needs=DESTRUCTIVE_MONEY_OBJECTS | SENDABLE_MONEY | TRADING_VENUES | plurals("balance pool"),
    ),
    Signal(
        exact("sign signs"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests signing with wallet keys",
        unless=exact("in up out"),
    ),
    Signal(
        exact("approve approves"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests granting a token spending allowance",
        needs=TRADING_VENUES
        | plurals("token erc20 erc721 nft spl allowance spender usdc usdt dai weth permit2")
        | exact("spend spending"),
    ),
    Signal(
        exact("send sends submit broadcast push post execute relay"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests sending a transaction or funds",
        needs=SENDABLE_MONEY,
    ),
    Signal(
        plurals("contract"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests sending a signed contract transaction",
        needs=plurals("write execute send interact transact"),
    ),
    Signal(
        exact("liquidity"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests moving funds into or out of a liquidity pool",
        needs=plurals("add provide remove supply deposit withdraw increase decrease"),
        also_a_noun=True,
    ),
    Signal(
        exact("for_sale"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests offering assets for sale: a sell order anyone can fill",
        overrides_read=True,
    ),
    Signal(
        exact("wrap wraps unwrap unwraps"),
        Category.FINANCIAL,
        Risk.HIGH,
        "suggests converting between a coin and its wrapped token",
        also_a_noun=True,
    ),
    Signal(
        exact("burn burns"),
        Category.DESTRUCTIVE,
        Risk.CRITICAL,
        "suggests destroying tokens for good",
    ),
    Signal(
        plurals("order trade position offer"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests placing or changing an order, which can fill at once",
        needs=ORDER_VERBS,
        also_a_noun=True,
    ),
    Signal(
        plurals("leverage"),
        Category.FINANCIAL,
        Risk.HIGH,
        "suggests changing the leverage later orders trade at",
        needs=ORDER_VERBS,
        also_a_noun=True,
    ),
    Signal(
        exact("buy buys sell sells trade trades bid bids"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests buying or selling: an order that can fill at once",
        also_a_noun=True,
    ),
    Signal(
        plurals("close cancel"),
        Category.DESTRUCTIVE,
        Risk.CRITICAL,
        "suggests cancelling orders or closing positions",
        needs=plurals("order position trade"),
    ),
    Signal(
        exact("exercise exercises"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests exercising an option, which converts the position for good",
        needs=plurals("option position contract"),
    ),
    Signal(
        exact("claim claims"),
        Category.FINANCIAL,
        Risk.HIGH,
        "suggests claiming funds into the wallet",
        also_a_noun=True,
    ),
    Signal(
        exact("unlock unlocks"),
        Category.CREDENTIALS,
        Risk.CRITICAL,
        "suggests unlocking wallet keys for use",
        needs=plurals("wallet keystore keyring"),
    ),
    Signal(
        exact("rebalance rebalances harvest harvests collect collects delegate delegates"),
        Category.FINANCIAL,
        Risk.HIGH,
        "suggests moving funds between positions",
    ),
    Signal(
        exact("convert converts"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests converting between assets, which is a trade",
        needs=CONVERTIBLE,
    ),
    Signal(
        plurals(
            "delete remove drop destroy purge wipe erase truncate cancel revoke terminate kill reset "
            "clear uninstall deregister unregister flush discard abort void rollback overwrite shred "
            "shutdown"
        ),
        Category.DESTRUCTIVE,
        Risk.HIGH,
        "suggests a destructive action",
    ),
    Signal(
        exact("drain drains nuke nukes"),
        Category.DESTRUCTIVE,
        Risk.HIGH,
        "suggests emptying or destroying something",
    ),
    Signal(
        exact("format formats reformat reformats"),
        Category.DESTRUCTIVE,
        Risk.HIGH,
        "suggests erasing a disk or volume",
        needs=plurals("disk drive volume partition device filesystem fs storage ssd hdd usb"),
    ),
    Signal(
        plurals("close"),
        Category.DESTRUCTIVE,
        Risk.HIGH,
        "suggests closing something for good",
        also_a_noun=True,
    ),
    Signal(
        plurals("email mail sms tweet message dm post reply share forward invite"),
        Category.EXTERNAL_COMMUNICATION,
        Risk.HIGH,
        "suggests sending messages to people outside the system",
        also_a_noun=True,
    ),
    Signal(
        exact("http https curl webhook webhooks"),
        Category.EXTERNAL_COMMUNICATION,
        Risk.HIGH,
        "suggests sending data to arbitrary outside services",
        also_a_noun=True,
    ),
    Signal(
        exact("send sends publish publishes notify notifies announce broadcast retweet"),
        Category.EXTERNAL_COMMUNICATION,
        Risk.HIGH,
        "suggests sending messages to people outside the system",
    ),
    Signal(
        plurals(
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
        plurals(
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
        exact("convert converts"),
        Category.READ_ONLY,
        Risk.LOW,
        "suggests a read-only conversion",
        unless=CONVERTIBLE,
    ),
    Signal(READ_VERBS, Category.READ_ONLY, Risk.LOW, "suggests a read-only query"),
    Signal(READ_NOUNS, Category.READ_ONLY, Risk.LOW, "names data that is read", also_a_noun=True),
)

"""Signals outside the name: argument names in the input schema and telling description phrases."""

from __future__ import annotations

from broker.catalogue.model import Category, Risk
from broker.catalogue.terms import Signal, exact

ARGUMENT_SIGNALS: tuple[Signal, ...] = (
    Signal(
        exact("private_key privatekey privkey mnemonic seed_phrase seedphrase secret_key recovery_phrase"),
        Category.CREDENTIALS,
        Risk.CRITICAL,
        "carries a wallet key",
        overrides_read=True,
    ),
    Signal(
        # An API password or passphrase the caller already holds: it passes through, it is not revealed.
        exact("password passphrase"),
        Category.CREDENTIALS,
        Risk.HIGH,
        "carries a password",
        overrides_read=True,
    ),
    Signal(
        exact("command cmd script code sql shell shell_command python_code source_code javascript"),
        Category.CODE_EXECUTION,
        Risk.CRITICAL,
        "suggests running code",
        whole_name=True,
    ),
    Signal(
        exact("amount quantity qty value_wei lamports sats flow_rate"),
        Category.FINANCIAL,
        Risk.CRITICAL,
        "suggests money movement to another party",
        needs=exact(
            "to recipient destination receiver beneficiary address dest payee spender to_address wallet "
            "recipient_address destination_address receiver_address"
        ),
    ),
    Signal(
        exact("amount quantity qty size notional"),
        Category.FINANCIAL,
        Risk.HIGH,
        "suggests money movement",
    ),
    Signal(
        exact(
            "to recipient recipients email phone phone_number chat_id channel channel_id cc bcc webhook_url"
        ),
        Category.EXTERNAL_COMMUNICATION,
        Risk.HIGH,
        "suggests sending a message",
        needs=exact("subject body message text content html"),
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
                "raw sql",
                "executing ddl",
                "executes ddl",
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
                "handles payments",
                "x402 payment",
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
                "places a market order",
                "place a market order",
                "places a limit order",
                "place a limit order",
                "executes a trade",
                "execute a trade",
                "for sale",
            }
        ),
        Category.FINANCIAL,
        Risk.CRITICAL,
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

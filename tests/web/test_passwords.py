"""Password hashes for approvers: the format, verification, refusal of broken or abusive hashes,
the configuration checks, and the `broker hash-password` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from broker.channels.web.passwords import (
    PasswordHashError,
    hash_password,
    parse_password_hash,
    verify_password,
)
from broker.config.errors import ConfigError
from broker.config.settings import load_settings


def test_a_hash_verifies_its_password_and_nothing_else() -> None:
    encoded = hash_password("correct horse", n=2**10)
    assert encoded.startswith("scrypt$1024$8$1$")
    stored = parse_password_hash(encoded)
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horse ", stored)
    assert not verify_password("", stored)


def test_the_same_password_hashes_differently_each_time() -> None:
    assert hash_password("pw", n=2**10) != hash_password("pw", n=2**10)


@pytest.mark.parametrize(
    ("encoded", "problem"),
    [
        ("bcrypt$2b$12$abc", "must look like scrypt$"),
        ("scrypt$1024$8$1$c2FsdHNhbHQ", "must look like scrypt$"),
        ("scrypt$x$8$1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5", "must be integers"),
        ("scrypt$1000$8$1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5", "power of two"),
        ("scrypt$4194304$8$1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5", "power of two between"),
        ("scrypt$1024$99$1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5", "r must be"),
        ("scrypt$1024$8$1$not base64!$a2V5a2V5a2V5a2V5a2V5a2V5", "base64"),
        ("scrypt$1024$8$1$c2Fs$a2V5", "too short"),
    ],
)
def test_broken_or_abusive_hashes_are_refused_with_a_reason(encoded: str, problem: str) -> None:
    with pytest.raises(PasswordHashError, match=problem.replace("$", r"\$")):
        parse_password_hash(encoded)


def test_an_empty_password_is_not_hashed() -> None:
    with pytest.raises(ValueError, match="empty password"):
        hash_password("")


def _config(tmp_path: Path, extra: str) -> Path:
    (tmp_path / "policy.yaml").write_text('version: "1"\ndefault: deny\n')
    path = tmp_path / "broker.yaml"
    path.write_text(f"servers: {{mcpServers: {{}}}}\npolicy: policy.yaml\n{extra}")
    return path


def test_the_configuration_refuses_a_malformed_password_hash_and_names_it(tmp_path: Path) -> None:
    path = _config(tmp_path, "approvers:\n  alice: {password_hash: 'scrypt$1000$8$1$abc$def'}\n")
    with pytest.raises(ConfigError, match=r"approvers\.alice\.password_hash: .*power of two"):
        load_settings(path, environ={})


def test_the_configuration_reads_the_web_block(tmp_path: Path) -> None:
    encoded = hash_password("pw", n=2**10)
    path = _config(
        tmp_path,
        f"approvers:\n  alice: {{password_hash: '{encoded}'}}\n"
        "web: {session_secret_env: WEB_SECRET, trusted_header: X-Forwarded-User, "
        "trusted_proxies: ['127.0.0.1/32', '10.1.2.0/24'], cookie_secure: true}\n",
    )
    settings = load_settings(path, environ={"WEB_SECRET": "s" * 40})
    assert settings.approvers[0].password_hash == encoded
    assert settings.web.session_secret == "s" * 40
    assert settings.web.trusted_header == "X-Forwarded-User"
    assert [str(network) for network in settings.web.trusted_proxies] == ["127.0.0.1/32", "10.1.2.0/24"]
    assert settings.web.cookie_secure is True and settings.web.enabled is True


@pytest.mark.parametrize(
    ("web", "environ", "problem"),
    [
        ("{trusted_header: X-Forwarded-User}", {}, "only honoured from trusted_proxies"),
        ("{trusted_header: X-User, trusted_proxies: [proxy.local]}", {}, "not an IP address or network"),
        ("{session_secret_env: WEB_SECRET}", {}, "WEB_SECRET is not set"),
        ("{session_secret_env: WEB_SECRET}", {"WEB_SECRET": "short"}, "at least 32 characters"),
        ("{trusted_header: 'X User', trusted_proxies: [127.0.0.1]}", {}, "web.trusted_header"),
    ],
)
def test_bad_web_settings_are_refused(
    tmp_path: Path, web: str, environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(_config(tmp_path, f"web: {web}\n"), environ=environ)


def _hash_password_command(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", "hash-password"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_broker_hash_password_reads_stdin_and_prints_a_hash_that_verifies() -> None:
    done = _hash_password_command("s3cret pass phrase\n")
    assert done.returncode == 0, done.stderr
    stored = parse_password_hash(done.stdout.strip())
    assert verify_password("s3cret pass phrase", stored)
    assert "s3cret" not in done.stdout


def test_broker_hash_password_refuses_an_empty_password() -> None:
    done = _hash_password_command("\n")
    assert done.returncode == 2
    assert "the password is empty" in done.stderr


def test_broker_hash_password_refuses_a_short_password() -> None:
    done = _hash_password_command("hunter2hunt\n")
    assert done.returncode == 2 and done.stdout == ""
    assert "the password has 11 characters; use at least 12" in done.stderr

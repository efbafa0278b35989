"""Policy files that cannot be read as text or numbers: a positioned PolicyError, never a crash.

And the running broker's reload keeps the last good policy whatever the file holds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest

from broker.config.policy_file import PolicyFile
from broker.policy import Policy, PolicyError, load_policy

GOOD = 'version: "1"\ndefault: deny\nrules:\n  - tool: get_ticker\n    action: allow\n'
LATIN_1_EDIT = 'version: "1"\ndefault: allow\n# café\n'.encode("latin-1")
LONG = "1" * 5000


def problem_of(text: str | bytes, source: str) -> tuple[int, int, str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(text, source=source)
    [problem] = caught.value.problems
    assert str(problem).startswith(f"{source}:{problem.line}:{problem.column}: ")
    return problem.line, problem.column, problem.message


def test_bytes_that_are_not_utf8_are_reported_where_they_are() -> None:
    line, column, message = problem_of(LATIN_1_EDIT, "policy.yaml")
    assert (line, column) == (3, 6)
    assert "not valid UTF-8" in message and "0xe9" in message


def test_the_column_of_a_bad_byte_counts_characters_not_bytes() -> None:
    line, column, _ = problem_of(b'version: "1"\n# \xc3\xa9 \xff\n', "p.yaml")
    assert (line, column) == (2, 5)


def test_utf8_bytes_load_like_the_text_they_hold() -> None:
    text = GOOD + "# café\n"
    assert load_policy(text.encode(), source="p.yaml").revision == load_policy(text, source="p.yaml").revision


@pytest.mark.parametrize(
    ("text", "source", "position"),
    [
        (f'{{"version": "1",\n "default": "deny",\n "x": {LONG}}}', "p.json", (3, 7)),
        (f'{{"version": "1",\n "default": "deny",\n "x": -{LONG}}}', "p.json", (3, 7)),
        (f'version: "1"\ndefault: deny\nx: {LONG}\n', "p.yaml", (3, 4)),
        (f'version: "1"\ndefault: deny\nx: 0x{"f" * 5000}\n', "p.yaml", (3, 4)),
    ],
)
def test_an_integer_too_long_to_convert_is_a_positioned_problem(
    text: str, source: str, position: tuple[int, int]
) -> None:
    line, column, message = problem_of(text, source)
    assert (line, column) == position
    assert "number too long" in message


def test_a_long_integer_inside_a_rule_condition_is_reported_too() -> None:
    text = f'version: "1"\nrules:\n  - tool: a\n    action: allow\n    when: {{"args.q": {{gt: {LONG}}}}}\n'
    line, _, message = problem_of(text, "p.yaml")
    assert line == 5 and "number too long" in message


def write(path: Path, data: str | bytes) -> None:
    path.write_bytes(data.encode() if isinstance(data, str) else data)


@pytest.mark.parametrize(
    "edit",
    [LATIN_1_EDIT, f'version: "1"\ndefault: allow\nx: {LONG}\n', f'{{"version": "1", "x": {LONG}}}'],
    ids=["latin-1", "long-yaml-int", "long-json-int"],
)
def test_reload_keeps_the_last_good_policy_and_says_why(
    tmp_path: Path, edit: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    write(path, GOOD)
    policy_file = PolicyFile(path)
    good = policy_file.holder.current.revision
    write(path, edit)
    with caplog.at_level(logging.ERROR, logger="broker.config.policy_file"):
        outcome = policy_file.reload()
    assert not outcome.changed and outcome.revision == good
    assert outcome.error is not None and f"{path}:" in outcome.error
    assert policy_file.holder.current.revision == good
    assert f"policy reload rejected, keeping revision {good}" in caplog.text


def test_a_policy_file_that_starts_out_unreadable_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    write(path, LATIN_1_EDIT)
    with pytest.raises(PolicyError, match=r"policy\.yaml:3:6: not valid UTF-8"):
        PolicyFile(path)


class _StopWatching(Exception):
    pass


@pytest.mark.anyio
async def test_the_watch_loop_outlives_an_unexpected_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    write(path, GOOD)
    seen: list[str] = []

    def on_change(old: Policy, new: Policy) -> None:
        seen.append(new.revision)
        if len(seen) == 1:
            raise RuntimeError("a listener broke")

    policy_file = PolicyFile(path, on_change=on_change)
    edits = iter([GOOD + "# first edit\n", LATIN_1_EDIT, GOOD + "# third edit\n"])

    async def next_edit(interval: float) -> None:
        # Each poll interval brings the next edit; the file's size changes every time, so the
        # watch sees each one without waiting for the clock.
        try:
            write(path, next(edits))
        except StopIteration:
            raise _StopWatching from None

    with (
        caplog.at_level(logging.ERROR, logger="broker.config.policy_file"),
        anyio.fail_after(5),
        pytest.raises(_StopWatching),
    ):
        await policy_file.watch(1.0, sleep=next_edit)
    third = load_policy(GOOD + "# third edit\n", source=str(path)).revision
    assert policy_file.holder.current.revision == third
    assert len(seen) == 2 and seen[-1] == third
    assert "policy reload failed unexpectedly" in caplog.text
    assert "not valid UTF-8" in caplog.text

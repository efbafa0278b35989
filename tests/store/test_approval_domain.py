"""The pure parts under the store: canonical hashing, ids, records, the state table, URLs."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.canonical import arguments_hash, audit_hash, canonical_json, request_key
from broker.approvals.ids import UlidFactory, ulid_time
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.transitions import ALLOWED_TRANSITIONS, check_transition
from broker.store.database import Backend, backend_of, database_url

from .builders import new_approval

T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert (
        canonical_json({"b": [1, {"d": None, "c": True}], "a": "café"})
        == '{"a":"café","b":[1,{"c":true,"d":null}]}'
    )


def test_arguments_hash_is_sha256_of_canonical_json() -> None:
    expected = hashlib.sha256('{"amount":120,"note":"ü"}'.encode()).hexdigest()

    assert arguments_hash({"note": "ü", "amount": 120}) == expected
    assert arguments_hash({"amount": 120, "note": "ü"}) == expected


@pytest.mark.parametrize(
    "value",
    [
        {1: "int key"},
        {"x": float("nan")},
        {"x": float("inf")},
        {"x": object()},
        {"x": "\ud800"},
        {"x": {2, 3}},
    ],
)
def test_canonical_json_refuses_what_json_cannot_carry_exactly(value: object) -> None:
    with pytest.raises(ValueError, match=r"JSON|key|UTF-8"):
        canonical_json(value)


def test_request_key_separates_its_fields() -> None:
    digest = arguments_hash({})

    assert request_key("ab", "c", digest) != request_key("a", "bc", digest)
    assert request_key("agent", "tool", digest) != request_key("other", "tool", digest)
    assert request_key("agent", "tool", digest) == request_key("agent", "tool", digest)


def hash_of(
    prev_hash: str = "0" * 64,
    *,
    seq: int = 1,
    approval_id: str = "a",
    event: str = "requested",
    actor: str = "x",
    at: datetime = T0,
    details: dict[str, object] | None = None,
) -> str:
    return audit_hash(
        prev_hash,
        seq=seq,
        approval_id=approval_id,
        event=event,
        actor=actor,
        at=at,
        details={"k": 1} if details is None else details,
    )


def test_audit_hash_depends_on_every_field() -> None:
    base = hash_of()
    variants = [
        hash_of("1" * 64),
        hash_of(seq=2),
        hash_of(approval_id="b"),
        hash_of(event="approved"),
        hash_of(actor="y"),
        hash_of(at=T0 + timedelta(microseconds=1)),
        hash_of(details={"k": 2}),
    ]

    assert base not in variants and len(set(variants)) == len(variants)
    assert hash_of(at=T0.astimezone(timezone(timedelta(hours=2)))) == base


def test_ulids_sort_by_time_and_stay_monotonic_within_a_millisecond() -> None:
    now = [T0]
    make = UlidFactory(lambda: now[0], entropy=lambda n: b"\xff" * n)
    same_ms = [make() for _ in range(5)]
    now[0] = T0 + timedelta(milliseconds=1)
    later = make()

    assert same_ms == sorted(same_ms) and len(set(same_ms)) == 5
    assert later > same_ms[-1]
    assert all(len(ulid) == 26 for ulid in [*same_ms, later])
    assert ulid_time(same_ms[0]) == T0
    assert ulid_time(later) == T0 + timedelta(milliseconds=1)


def test_ulids_survive_a_clock_stepping_back() -> None:
    now = [T0]
    make = UlidFactory(lambda: now[0])
    first = make()
    now[0] = T0 - timedelta(seconds=10)

    assert make() > first


def test_ulid_time_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="26 characters"):
        ulid_time("short")
    with pytest.raises(ValueError, match="invalid character"):
        ulid_time("U" * 26)


def test_new_approval_derives_hashes_and_copies_arguments() -> None:
    arguments = {"items": ("a", "b"), "nested": {"x": 1}}
    new = new_approval(arguments=arguments, approvers=["alice"])
    arguments["nested"]["x"] = 2  # type: ignore[index]

    assert new.arguments == {"items": ["a", "b"], "nested": {"x": 1}}
    assert new.approvers == ("alice",)
    assert new.arguments_hash == arguments_hash({"items": ["a", "b"], "nested": {"x": 1}})
    assert new.request_key == request_key(new.agent, new.tool, new.arguments_hash)


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"agent": ""}, "agent"),
        ({"tool": None}, "tool"),
        ({"arguments": ["not", "an", "object"]}, "JSON object"),
        ({"arguments": {"x": float("nan")}}, "canonical JSON"),
        ({"timeout": timedelta(0)}, "timeout"),
        ({"timeout": 30}, "timeout"),
        ({"approvers": ("alice", "")}, "approvers"),
        ({"task_id": ""}, "task_id"),
    ],
)
def test_new_approval_rejects_bad_input(overrides: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        new_approval(**overrides)


def make_approval(status: ApprovalStatus, **overrides: object) -> Approval:
    fields: dict[str, object] = {
        "id": "apv-1",
        "status": status,
        "agent": "agent-1",
        "session_id": None,
        "server": "s",
        "tool": "t",
        "upstream_tool": "t",
        "arguments": {},
        "arguments_hash": arguments_hash({}),
        "request_key": request_key("agent-1", "t", arguments_hash({})),
        "policy_revision": "r",
        "rule": "default",
        "rule_reason": "",
        "approvers": (),
        "channels": (),
        "created_at": T0,
        "expires_at": T0 + timedelta(minutes=5),
        "version": 1,
    }
    fields.update(overrides)
    return Approval(**fields)  # type: ignore[arg-type]


def test_time_left_counts_down_to_zero_while_pending() -> None:
    pending = make_approval(ApprovalStatus.PENDING)

    assert pending.time_left(T0 + timedelta(minutes=2)) == timedelta(minutes=3)
    assert pending.time_left(T0 + timedelta(minutes=9)) == timedelta(0)
    assert not pending.is_overdue(T0 + timedelta(minutes=4))
    assert pending.is_overdue(T0 + timedelta(minutes=5))
    assert make_approval(ApprovalStatus.APPROVED).time_left(T0) == timedelta(0)


def test_terminal_statuses_are_exactly_those_without_a_way_out() -> None:
    for status in ApprovalStatus:
        assert status.is_terminal == (not ALLOWED_TRANSITIONS[status])
        assert make_approval(status).is_terminal == status.is_terminal
    assert ApprovalStatus.CANCELLED not in ALLOWED_TRANSITIONS[ApprovalStatus.APPROVED]


def test_check_transition_accepts_exactly_the_table() -> None:
    for source in ApprovalStatus:
        for target in ApprovalStatus:
            if target in ALLOWED_TRANSITIONS[source]:
                assert check_transition([source], target) == {source}
            else:
                with pytest.raises(ValueError, match="not reachable"):
                    check_transition([source], target)


def test_every_status_has_an_audit_event() -> None:
    assert AuditEventKind.for_status(ApprovalStatus.PENDING) is AuditEventKind.REQUESTED
    for status in ApprovalStatus:
        assert AuditEventKind.for_status(status)


def test_audit_event_validation() -> None:
    with pytest.raises(ValueError, match="event name"):
        AuditEvent("Approved!", "alice")
    with pytest.raises(ValueError, match="actor"):
        AuditEvent("approved", "")
    with pytest.raises(ValueError, match="canonical JSON"):
        AuditEvent("approved", "alice", {"when": object()})
    details = {"k": [1]}
    event = AuditEvent("approved", "alice", details)
    details["k"] = [2]
    assert event.details == {"k": [1]}


@pytest.mark.parametrize(
    ("given", "normalized", "backend"),
    [
        ("sqlite:///var/approvals.db", "sqlite+aiosqlite:///var/approvals.db", Backend.SQLITE),
        ("sqlite+aiosqlite:////abs/a.db", "sqlite+aiosqlite:////abs/a.db", Backend.SQLITE),
        ("postgresql://u:p@db:5432/broker", "postgresql+asyncpg://u:p@db:5432/broker", Backend.POSTGRESQL),
        ("postgres://u@db/broker", "postgresql+asyncpg://u@db/broker", Backend.POSTGRESQL),
        ("postgresql+asyncpg://u@db/broker", "postgresql+asyncpg://u@db/broker", Backend.POSTGRESQL),
    ],
)
def test_database_urls_are_pointed_at_async_drivers(given: str, normalized: str, backend: Backend) -> None:
    assert database_url(given).render_as_string(hide_password=False) == normalized
    assert backend_of(given) is backend


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("mysql://u@db/broker", "unsupported"),
        ("postgresql+psycopg2://u@db/broker", "unsupported"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("not a url", "not a database URL"),
    ],
)
def test_unusable_database_urls_are_refused(given: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        database_url(given)

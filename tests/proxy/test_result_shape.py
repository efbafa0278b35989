"""The CallToolResult shape check, version by version, over a table of good and bad results."""

from __future__ import annotations

from typing import Any

import pytest
from mcp_types import CallToolResult
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from broker.proxy.result_shape import tool_result_problem

ALL = KNOWN_PROTOCOL_VERSIONS
FROM_2025_03 = ("2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28")
FROM_2025_06 = ("2025-06-18", "2025-11-25", "2026-07-28")

TEXT = {"type": "text", "text": "hello"}
IMAGE = {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"}
AUDIO = {"type": "audio", "data": "UklGRg==", "mimeType": "audio/wav"}
LINK = {"type": "resource_link", "uri": "file:///a.txt", "name": "a.txt"}
TEXT_RESOURCE = {"type": "resource", "resource": {"uri": "file:///a.txt", "text": "a"}}
BLOB_RESOURCE = {"type": "resource", "resource": {"uri": "file:///a.bin", "blob": "AAEC"}}

GOOD: list[tuple[str, tuple[str, ...], dict[str, Any]]] = [
    ("empty content", ALL, {"content": []}),
    ("text", ALL, {"content": [TEXT]}),
    ("image", ALL, {"content": [IMAGE]}),
    ("embedded text", ALL, {"content": [TEXT_RESOURCE]}),
    ("embedded blob", ALL, {"content": [BLOB_RESOURCE]}),
    ("audio", FROM_2025_03, {"content": [AUDIO]}),
    ("resource link", FROM_2025_06, {"content": [LINK]}),
    (
        "every optional field",
        FROM_2025_06,
        {
            "content": [
                {**TEXT, "annotations": {"audience": ["user"], "priority": 0.5}, "_meta": {"k": 1}},
                IMAGE,
                AUDIO,
                {**LINK, "title": "A", "size": 3, "mimeType": "text/plain"},
                {**TEXT_RESOURCE, "annotations": {}},
            ],
            "isError": True,
            "structuredContent": {"total": 3},
            "_meta": {"io.example/trace": "abc"},
        },
    ),
    (
        "unknown keys everywhere",
        ALL,
        {
            "content": [
                {**TEXT, "futureField": [1]},
                {**TEXT_RESOURCE, "resource": {"uri": "u", "text": "t", "x": 1}},
            ],
            "someFutureKey": {"nested": True},
        },
    ),
    (
        "structuredContent not yet defined",
        ("2024-11-05", "2025-03-26"),
        {"content": [], "structuredContent": 5},
    ),
    ("structuredContent any JSON value", ("2026-07-28",), {"content": [], "structuredContent": [1, 2]}),
    ("structuredContent null", ("2026-07-28",), {"content": [], "structuredContent": None}),
    ("resultType", ALL, {"content": [], "resultType": "complete"}),
]

BAD: list[tuple[str, tuple[str, ...], dict[str, Any], str]] = [
    ("content missing", ALL, {"isError": True}, "content is missing"),
    (
        "content a string",
        ALL,
        {"content": "not-a-list", "isError": "maybe"},
        "content must be an array, got string",
    ),
    ("content null", ALL, {"content": None}, "content must be an array, got null"),
    ("content an object", ALL, {"content": TEXT}, "content must be an array, got object"),
    ("block a string", ALL, {"content": [TEXT, "hello"]}, "content[1] must be an object, got string"),
    ("type missing", ALL, {"content": [{"text": "x"}]}, "content[0].type is missing (one of text, image, "),
    ("type a number", ALL, {"content": [{"type": 3}]}, "content[0].type must be a string, got number"),
    (
        "type unknown",
        ALL,
        {"content": [{"type": "video"}]},
        "content[0].type 'video' is not a content type of protocol ",
    ),
    (
        "text a number",
        ALL,
        {"content": [TEXT, TEXT, {"type": "text", "text": 42}]},
        "content[2].text must be a string, got number",
    ),
    ("text missing", ALL, {"content": [{"type": "text"}]}, "content[0].text is missing"),
    (
        "text null",
        ALL,
        {"content": [{"type": "text", "text": None}]},
        "content[0].text must be a string, got null",
    ),
    (
        "image data missing",
        ALL,
        {"content": [{"type": "image", "mimeType": "image/png"}]},
        "content[0].data is missing",
    ),
    (
        "image mimeType a list",
        ALL,
        {"content": [{**IMAGE, "mimeType": ["image/png"]}]},
        "content[0].mimeType must be a string, got array",
    ),
    (
        "audio data a boolean",
        FROM_2025_03,
        {"content": [{**AUDIO, "data": True}]},
        "content[0].data must be a string, got boolean",
    ),
    (
        "audio in 2024-11-05",
        ("2024-11-05",),
        {"content": [AUDIO]},
        "content[0].type 'audio' is not a content type of protocol 2024-11-05 (text, image, resource)",
    ),
    (
        "resource link before 2025-06-18",
        ("2024-11-05", "2025-03-26"),
        {"content": [LINK]},
        "content[0].type 'resource_link' is not a content type",
    ),
    (
        "link name missing",
        FROM_2025_06,
        {"content": [{"type": "resource_link", "uri": "u"}]},
        "content[0].name is missing",
    ),
    (
        "link uri a number",
        FROM_2025_06,
        {"content": [{**LINK, "uri": 1}]},
        "content[0].uri must be a string, got number",
    ),
    ("resource missing", ALL, {"content": [{"type": "resource"}]}, "content[0].resource is missing"),
    (
        "resource a string",
        ALL,
        {"content": [{"type": "resource", "resource": "file:///a"}]},
        "content[0].resource must be an object, got string",
    ),
    (
        "resource uri missing",
        ALL,
        {"content": [{"type": "resource", "resource": {"text": "a"}}]},
        "content[0].resource.uri is missing",
    ),
    (
        "resource neither text nor blob",
        ALL,
        {"content": [{"type": "resource", "resource": {"uri": "u"}}]},
        "content[0].resource must have a text or a blob",
    ),
    (
        "resource text a number",
        ALL,
        {"content": [{"type": "resource", "resource": {"uri": "u", "text": 1}}]},
        "content[0].resource.text must be a string, got number",
    ),
    (
        "resource blob null",
        ALL,
        {"content": [{"type": "resource", "resource": {"uri": "u", "blob": None}}]},
        "content[0].resource.blob must be a string, got null",
    ),
    (
        "block annotations a string",
        ALL,
        {"content": [{**TEXT, "annotations": "high"}]},
        "content[0].annotations must be an object, got string",
    ),
    (
        "block _meta a list",
        ALL,
        {"content": [{**TEXT, "_meta": []}]},
        "content[0]._meta must be an object, got array",
    ),
    ("isError a string", ALL, {"content": [], "isError": "maybe"}, "isError must be a boolean, got string"),
    ("isError null", ALL, {"content": [], "isError": None}, "isError must be a boolean, got null"),
    ("isError a number", ALL, {"content": [], "isError": 1}, "isError must be a boolean, got number"),
    ("_meta a string", ALL, {"content": [], "_meta": "x"}, "_meta must be an object, got string"),
    (
        "structuredContent a list",
        ("2025-06-18", "2025-11-25"),
        {"content": [], "structuredContent": [1]},
        "structuredContent must be an object, got array",
    ),
    (
        "structuredContent null",
        ("2025-06-18", "2025-11-25"),
        {"content": [], "structuredContent": None},
        "structuredContent must be an object, got null",
    ),
    (
        "resultType a number",
        ALL,
        {"content": [], "resultType": 1},
        "resultType must be a string, got number",
    ),
]


SDK_IS_LAXER = {
    "type missing": "its TextContent defaults type to 'text'; the schema requires type",
    "isError a number": "pydantic's lax mode reads 1 as true; the schema says boolean",
    "structuredContent a list": "it takes any JSON value, as 2026-07-28 does",
    "structuredContent null": "likewise",
}
"""Where the official client's model accepts what the schema of 2025-11-25 does not, and why."""


def _cases_good() -> list[Any]:
    return [
        pytest.param(version, result, id=f"{version} {name}")
        for name, versions, result in GOOD
        for version in versions
    ]


def _cases_bad() -> list[Any]:
    return [
        pytest.param(version, result, problem, id=f"{version} {name}")
        for name, versions, result, problem in BAD
        for version in versions
    ]


@pytest.mark.parametrize(("version", "result"), _cases_good())
def test_a_well_formed_result_passes(version: str, result: dict[str, Any]) -> None:
    assert tool_result_problem(result, version) is None


@pytest.mark.parametrize(("version", "result", "problem"), _cases_bad())
def test_a_malformed_result_is_named_precisely(version: str, result: dict[str, Any], problem: str) -> None:
    found = tool_result_problem(result, version)
    assert found is not None and found.startswith(problem), found


@pytest.mark.parametrize("version", [None, "1999-01-01"])
def test_an_unknown_version_is_judged_as_the_newest(version: str | None) -> None:
    assert tool_result_problem({"content": [LINK], "structuredContent": [1]}, version) is None
    assert (
        tool_result_problem({"content": [], "resultType": 1}, version)
        == "resultType must be a string, got number"
    )
    unknown = tool_result_problem({"content": [{"type": "video"}]}, version)
    assert unknown == (
        "content[0].type 'video' is not a content type of protocol 2026-07-28 "
        "(text, image, audio, resource_link, resource)"
    )


def test_an_unknown_type_is_quoted_shortened() -> None:
    problem = tool_result_problem({"content": [{"type": "v" * 500}]}, "2025-11-25")
    assert problem is not None and len(problem) < 200 and "'" + "v" * 40 + "…'" in problem


@pytest.mark.parametrize(
    ("name", "result", "problem"), [(n, r, p) for n, v, r, p in BAD if "2025-11-25" in v]
)
def test_what_is_refused_for_2025_11_25_the_sdk_client_cannot_parse_either(
    name: str, result: dict[str, Any], problem: str
) -> None:
    if name in SDK_IS_LAXER:
        CallToolResult.model_validate(result)
        return
    with pytest.raises(ValidationError):
        CallToolResult.model_validate(result)


@pytest.mark.parametrize(("name", "result"), [(n, r) for n, v, r in GOOD if "2025-11-25" in v])
def test_what_passes_for_2025_11_25_the_sdk_client_parses(name: str, result: dict[str, Any]) -> None:
    CallToolResult.model_validate(result)

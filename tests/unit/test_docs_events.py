"""docs/events.md, the event contract, checked against the real validator.

Every ```json block is an example: accepted as it stands, or, with `rejected=FIELD`, every
event in it rejected with an error naming FIELD first (and, when the paragraph after the
block shows the error in backticks, exactly that error). `route=SOURCE` validates it as
posted to /webhook/SOURCE. ```json answer blocks are webhook answers: JSON, not events.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from sluice.sources import SCHEMAS, validate_body
from sluice.sources._common import enum_paths

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "events.md"


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    attrs: dict[str, str]
    body: str
    shown_error: str | None  # the `error` shown in the paragraph after the block

    @property
    def name(self) -> str:
        return f"docs/events.md:{self.line}"


def blocks() -> list[Block]:
    lines = DOC.read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        start = i
        lang, *words = lines[i][3:].split() or [""]
        end = lines.index("```", start + 1)
        after = next((line for line in lines[end + 1 :] if line.strip()), "")
        shown = re.match(r"`([^`]+)`", after)
        found.append(
            Block(
                line=start + 1,
                lang=lang,
                attrs=dict(w.split("=", 1) if "=" in w else (w, "") for w in words),
                body="\n".join(lines[start + 1 : end]),
                shown_error=shown.group(1) if shown else None,
            )
        )
        i = end + 1
    return found


def examples() -> list[Block]:
    return [b for b in blocks() if b.lang == "json" and "answer" not in b.attrs]


def test_the_doc_has_examples_of_both_kinds() -> None:
    kinds = {"rejected" in b.attrs for b in examples()}
    assert kinds == {True, False}
    for block in blocks():
        assert block.lang in ("json", "sh", "text"), f"{block.name}: unexpected fence"
        assert set(block.attrs) <= {"answer", "route", "rejected"}, block.name


@pytest.mark.parametrize("block", examples(), ids=lambda b: b.name)
def test_example_is_judged_by_the_validator_as_the_doc_says(block: Block) -> None:
    body = block.body.encode()
    json.loads(body)  # the example itself is JSON
    result = validate_body(body, route_source=block.attrs.get("route"))
    count = len(json.loads(body)) if body.lstrip().startswith(b"[") else 1
    field = block.attrs.get("rejected")
    if field is None:
        assert [r.error for r in result.rejected] == [], block.name
        assert result.accepted == count and result.duplicates == 0
        return
    assert result.accepted == 0, f"{block.name}: expected to be rejected"
    assert len(result.rejected) == count
    for rejection in result.rejected:
        assert rejection.error.startswith(f"{field}: "), (block.name, rejection.error)
    if block.shown_error is not None:
        assert [r.error for r in result.rejected] == [block.shown_error] * count


@pytest.mark.parametrize("block", [b for b in blocks() if "answer" in b.attrs], ids=str)
def test_answers_are_json(block: Block) -> None:
    answer = json.loads(block.body)
    assert set(answer) in ({"accepted", "duplicates", "rejected"}, {"error"})


def test_every_event_type_of_every_source_has_an_accepted_example() -> None:
    shown: dict[str, set[str]] = {name: set() for name in SCHEMAS}
    for block in examples():
        if "rejected" in block.attrs:
            continue
        parsed = json.loads(block.body)
        for event in parsed if isinstance(parsed, list) else [parsed]:
            source = block.attrs.get("route") or event["source"]
            shown[source].add(event.get("eventType") or event.get("type"))
    for name, schema in SCHEMAS.items():
        wanted = set().union(*schema.event_types.values()) if schema.event_types else set()
        assert wanted <= shown[name], f"{name}: no example of {wanted - shown[name]}"
        assert shown[name], f"{name}: no example"


def test_every_allowed_value_of_every_enumerated_field_is_listed() -> None:
    text = DOC.read_text()
    for name, schema in SCHEMAS.items():
        structs = [schema.event, *schema.engagement.values()]
        for struct in structs:
            for path, allowed in enum_paths(struct).items():
                for value in allowed:
                    if path == "source":
                        continue
                    assert f"`{value}`" in text, f"{name} {path}: `{value}` not in the doc"
        for stage, types in schema.event_types.items():
            for event_type in types:
                assert f"`{event_type}`" in text, f"{name} {stage}: `{event_type}` missing"


def test_the_doc_has_a_limits_table() -> None:
    text = DOC.read_text()
    assert re.search(r"^## Limits$", text, re.M)
    section = text.split("## Limits", 1)[1].split("\n## ", 1)[0]
    assert section.count("\n|") >= 5


def test_readme_links_the_contract_and_nothing_outside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "(docs/events.md)" in readme
    assert "shared/" not in readme


def answer_statuses(text: str) -> set[str]:
    """The status codes in the first table whose header is `| status | when | body |`."""
    table = text.split("| status | when | body |", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^\| (\d{3})\b", table, re.M))


def test_the_doc_and_the_readme_list_the_same_webhook_answers() -> None:
    readme = answer_statuses((ROOT / "README.md").read_text())
    assert {"202", "422", "400", "413", "415", "429", "503"} <= readme
    assert answer_statuses(DOC.read_text()) == readme


# What the Limits table says today, probed against the validator: when a limit changes,
# this fails until the table in docs/events.md says the new limit (then update the probe).
LIMIT_PROBES = [
    ("a 256-character userId: at most 256", ("data", "user", "userId"), "u" * 256, True),
    ("a 257-character userId: at most 256", ("data", "user", "userId"), "u" * 257, False),
    ("a 1,001-character name: at most 1,000", ("data", "user", "name"), "n" * 1001, False),
    ("age 2**31 - 1: PostgreSQL integer", ("data", "user", "age"), 2**31 - 1, True),
    ("age 2**31: PostgreSQL integer", ("data", "user", "age"), 2**31, False),
    ("age 31.0: a JSON integer only", ("data", "user", "age"), 31.0, False),
    ("purchaseAmount -1: >= 0", ("data", "engagement", "purchaseAmount"), "-1", False),
    ("purchaseAmount NaN: finite", ("data", "engagement", "purchaseAmount"), "NaN", False),
    ("purchaseAmount 1.234: 2 places", ("data", "engagement", "purchaseAmount"), "1.234", False),
    (
        "purchaseAmount 1e1200: no exponent",
        ("data", "engagement", "purchaseAmount"),
        "1e1200",
        False,
    ),
    (
        "purchaseAmount of 18 digits",
        ("data", "engagement", "purchaseAmount"),
        "9999999999999999.99",
        True,
    ),
    (
        "purchaseAmount of 19 digits",
        ("data", "engagement", "purchaseAmount"),
        "99999999999999999.99",
        False,
    ),
    ("timestamp in 1970", ("timestamp",), "1970-01-01T00:00:00Z", True),
    ("timestamp in 1969", ("timestamp",), "1969-12-31T23:59:59Z", False),
    ("timestamp with offset past year 9999", ("timestamp",), "9999-12-31T23:00:00-02:00", False),
]


@pytest.mark.parametrize(("claim", "path", "value", "accepted"), LIMIT_PROBES, ids=str)
def test_the_limits_table_says_what_the_validator_does(
    claim: str, path: tuple[str, ...], value: object, accepted: bool
) -> None:
    checkout = next(
        json.loads(b.body)
        for b in examples()
        if "rejected" not in b.attrs and '"checkout.complete"' in b.body
    )
    target = checkout
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    result = validate_body(json.dumps(checkout).encode())
    assert (result.accepted == 1) is accepted, (
        f"docs/events.md, Limits: {claim!r} no longer holds "
        f"({[r.error for r in result.rejected]}): update the table and this probe"
    )

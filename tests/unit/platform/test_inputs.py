"""The rules of what can be stored (:mod:`spine.platform.inputs`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from spine.platform.inputs import (
    INT64_MAX,
    INT64_MIN,
    InvalidInput,
    StoredJson,
    StoredMoment,
    StoredText,
    check_json,
    json_problem,
    load_json,
    moment_problem,
    storable_json,
    storable_text,
    text_problem,
)

WEST = timezone(-timedelta(hours=23, minutes=59))
EAST = timezone(timedelta(hours=23, minutes=59))


@pytest.mark.parametrize("value", ["", "plain", "ünïcödé", "😀 paired", "\u2028", "\x01\x1f"])
def test_storable_strings_pass(value: str) -> None:
    assert text_problem(value) is None


@pytest.mark.parametrize(
    ("value", "mended"),
    [
        ("a\x00b", "a\ufffdb"),
        ("\ud800", "\ufffd"),
        ("x\udfffy\x00\ud83d", "x\ufffdy\ufffd\ufffd"),
        ("😀 paired ünï", "😀 paired ünï"),
        ("plain", "plain"),
    ],
)
def test_text_from_elsewhere_is_mended_where_it_cannot_be_stored(value: str, mended: str) -> None:
    assert storable_text(value) == mended


@given(st.text(alphabet=st.characters(codec=None, exclude_categories=())))
def test_mended_text_is_storable_and_keeps_every_other_character(value: str) -> None:
    mended = storable_text(value)
    assert text_problem(mended) is None
    mended.encode("utf-8")  # what the answer, the cache and the database need
    assert len(mended) == len(value)
    assert all(m == v for m, v in zip(mended, value, strict=True) if m != "\ufffd")
    if text_problem(value) is None:
        assert mended is value


def test_json_from_elsewhere_has_every_string_mended_keys_too() -> None:
    value = {"a\x00": ["ok", {"deep": "x\ud800"}], "n": 1, "f": 0.5, "b": None, "t": True}
    assert storable_json(value) == {
        "a\ufffd": ["ok", {"deep": "x\ufffd"}],
        "n": 1,
        "f": 0.5,
        "b": None,
        "t": True,
    }
    clean = {"a": ["ok", {"deep": "😀"}]}
    assert storable_json(clean) is clean  # nothing to mend: the value itself, not a copy
    assert storable_json(None) is None


_ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=8)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _ANY_TEXT,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_ANY_TEXT, inner, max_size=3),
        max_leaves=12,
    )
)
def test_mended_json_is_storable(value: Any) -> None:
    mended = storable_json(value)
    assert json_problem(mended) is None
    json.dumps(mended, ensure_ascii=False).encode("utf-8")
    if json_problem(value) is None:
        assert mended is value


@pytest.mark.parametrize(
    ("value", "word"), [("a\x00b", "NUL"), ("\ud800", "surrogate"), ("x\udfffy", "surrogate")]
)
def test_nul_and_lone_surrogates_are_named(value: str, word: str) -> None:
    reason = text_problem(value)
    assert reason is not None and word in reason


@pytest.mark.parametrize(
    "moment",
    [
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=WEST),  # the year 10000 in UTC
        datetime(1, 1, 1, 0, 0, tzinfo=EAST),  # the year 0 in UTC
    ],
)
def test_datetimes_that_leave_the_calendar_in_utc_are_refused(moment: datetime) -> None:
    assert moment_problem(moment) is not None


@pytest.mark.parametrize(
    "moment",
    [
        datetime(9999, 12, 31, 0, 0, tzinfo=EAST),
        datetime(1, 1, 1, 23, 59, tzinfo=EAST),
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59),  # naive: taken as UTC
    ],
)
def test_datetimes_within_the_calendar_pass(moment: datetime) -> None:
    assert moment_problem(moment) is None


def test_json_problems_name_their_path() -> None:
    assert json_problem({"a": [1, {"b": "x\x00"}]}) is not None
    problem = json_problem({"a": [1, {"b": "x\x00"}]})
    assert problem is not None and problem.field() == "a.1.b"
    problem = json_problem({"k\ud800": 1})
    assert problem is not None and problem.field() == "body" and "key" in problem.reason
    problem = json_problem({"n": [float("inf")]})
    assert problem is not None and problem.field("metadata") == "metadata.n.0"


@pytest.mark.parametrize("number", [INT64_MAX + 1, INT64_MIN - 1, 10**400])
def test_integers_beyond_64_bits_are_refused(number: int) -> None:
    assert json_problem({"n": number}) is not None


@pytest.mark.parametrize("number", [INT64_MAX, INT64_MIN, 0, 1.5, -1e308, True, None])
def test_numbers_json_holds_pass(number: Any) -> None:
    assert json_problem([number]) is None


def test_depth_is_bounded_without_recursion() -> None:
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = [deep]
    problem = json_problem(deep, max_depth=64)
    assert problem is not None and "64 levels" in problem.reason
    within: Any = []
    for _ in range(63):
        within = [within]
    assert json_problem(within, max_depth=64) is None  # 64 arrays
    assert json_problem([within], max_depth=64) is not None  # 65


def test_load_json_refuses_what_the_parser_cannot_even_read() -> None:
    with pytest.raises(InvalidInput) as raised:
        load_json("[" * 100_000 + "]" * 100_000)
    assert raised.value.field == "body"
    with pytest.raises(InvalidInput) as raised:
        load_json('{"x": 1e400}', field="")
    assert raised.value.field == "x"
    with pytest.raises(json.JSONDecodeError):
        load_json("{not json")
    assert load_json(json.dumps({"ok": ["😀"]})) == {"ok": ["😀"]}


def test_check_json_raises_a_400_naming_the_field_under_a_prefix() -> None:
    with pytest.raises(InvalidInput) as raised:
        check_json({"k": "\ud800"}, field="metadata")
    assert raised.value.status_code == 400
    assert raised.value.field == "metadata.k"
    assert raised.value.message.startswith("metadata.k: ")


class Model(BaseModel):
    text: StoredText
    when: StoredMoment | None = None
    data: Annotated[dict[str, Any], StoredJson] = {}


def test_the_pydantic_types_apply_the_same_rules() -> None:
    Model(text="fine", when=datetime(2026, 1, 1, tzinfo=UTC), data={"a": [1, "b"]})
    for bad in (
        {"text": "a\x00"},
        {"text": "ok", "when": "9999-12-31T23:59:59-23:59"},
        {"text": "ok", "data": {"n": 2**64}},
        {"text": "ok", "data": {"x": {"y": "\udc00"}}},
    ):
        with pytest.raises(ValidationError) as raised:
            Model.model_validate(bad)
        error = raised.value.errors()[0]
        assert error["type"] in ("unstorable_text", "datetime_out_of_range", "unstorable_json")
    with pytest.raises(ValidationError) as raised:
        Model.model_validate({"text": "ok", "data": {"x": {"y": "\udc00"}}})
    assert "x.y" in raised.value.errors()[0]["msg"]

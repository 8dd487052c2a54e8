"""Mappings: what an event writes, and what cannot be mapped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spine.events.cloudevent import dedupe_id, parse_structured
from spine.events.log import ReceivedEvent
from spine.graph.mapping import MappingError, MappingSet
from spine.graph.writer import statements_for
from spine.platform.errors import ConfigurationError

EXAMPLES = Path(__file__).resolve().parents[3] / "graph" / "spine" / "graph" / "examples"


def received(event_type: str, data: Any, *, tenant: str = "acme") -> ReceivedEvent:
    event = parse_structured(
        {
            "specversion": "1.0",
            "id": "e1",
            "source": "/s",
            "type": event_type,
            "time": "2026-01-01T00:00:00Z",
            "data": data,
        }
    )
    return ReceivedEvent(key=dedupe_id(tenant, "/s", "e1"), tenant=tenant, event=event)


def test_a_hire_writes_two_nodes_and_a_superseding_relationship() -> None:
    mappings = MappingSet.load(EXAMPLES / "mappings")
    event = received(
        "com.example.person.hired",
        {
            "person": {"id": 7, "name": "Ann", "tags": ["a", "b"], "extra": {"x": 1}},
            "company": {"id": "c1"},
            "role": "dev",
        },
    )
    writes = mappings.plan(event, time_ms=1000)
    assert writes is not None
    person, company = writes.nodes
    assert (person.label, person.uid, person.tenant) == ("Person", "Person:7", "acme")
    assert person.properties == {"id": 7, "name": "Ann"}
    assert (company.uid, company.properties) == ("Company:c1", {"id": "c1"})
    [works] = writes.relationships
    assert (works.type, works.start, works.end, works.supersedes) == (
        "WORKS_AT",
        "Person:7",
        "Company:c1",
        True,
    )
    assert works.properties == {"role": "dev"}
    assert works.event_id == "e1" and works.source == "/s" and works.time == 1000
    assert mappings.plan(received("com.example.other", {}), time_ms=1) is None
    assert {"Person", "Company"} <= mappings.allowlist.labels
    assert "WORKS_AT" in mappings.allowlist.types


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"name": "no id"}, "data.id is missing"),
        ({"id": True}, "must be a string or an integer"),
        ({"id": {"a": 1}}, "must be a string or an integer"),
        ({"id": "  "}, "non-empty key"),
        # FalkorDB's uid index does not find these again (see test_graph_keys.py).
        *(({"id": f"k{end}"}, "may not end in whitespace") for end in " \t\n\v\f\r"),
        ({"id": "a\x01b"}, "U\\+0001"),
    ],
)
def test_an_event_without_a_usable_key_cannot_be_mapped(data: Any, reason: str) -> None:
    mappings = MappingSet.load(EXAMPLES / "mappings")
    with pytest.raises(MappingError, match=reason) as refused:
        mappings.plan(received("com.example.person.updated", data), time_ms=1)
    if "id" in data:
        assert refused.value.field == "data.id"


@pytest.mark.parametrize("key", ["\tlead", "in side", "tab\tin", "nbsp\xa0", "x\x02", "ls\u2028"])
def test_keys_the_graph_index_finds_are_mapped(key: str) -> None:
    mappings = MappingSet.load(EXAMPLES / "mappings")
    writes = mappings.plan(received("com.example.person.updated", {"id": key}), time_ms=1)
    assert writes is not None
    assert [n.uid for n in writes.nodes] == [f"Person:{key}"]


def test_versions_sort_as_event_times_before_1970_too() -> None:
    mappings = MappingSet.load(EXAMPLES / "mappings")
    times = [-(10**14), -86_400_000, -1001, -1000, -999, -2, -1, 0, 1, 2, 999, 1000, 10**14]
    versions = []
    for time_ms in times:
        writes = mappings.plan(received("com.example.person.updated", {"id": 1}), time_ms=time_ms)
        assert writes is not None
        versions.append(writes.nodes[0].version)
    assert sorted(versions) == versions
    assert len(set(versions)) == len(versions)
    # Versions already stored (times from 1970 on) keep their form.
    assert versions[times.index(1000)].startswith("000000000001000:")


def test_a_bad_mapping_file_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "mappings:\n  - event: x\n    nodes:\n      a: {label: 'Bad Label', key: id, properties: {id: data.id}}\n"
    )
    with pytest.raises(ConfigurationError, match="label 'Bad Label'"):
        MappingSet.load(tmp_path)
    (tmp_path / "bad.yaml").write_text(
        "mappings:\n  - event: x\n    nodes:\n      a: {label: A, key: id, properties: {tenant: data.id, id: data.id}}\n"
    )
    with pytest.raises(ConfigurationError, match="written by ingestion"):
        MappingSet.load(tmp_path)


def test_a_mapping_file_that_is_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes("mappings: [] # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigurationError, match=r"latin1\.yaml") as refused:
        MappingSet.load(tmp_path)
    assert refused.value.field == "GENAI_KNOWLEDGE__MAPPINGS_DIR"


def test_a_batch_folds_repeats_so_the_newest_values_win() -> None:
    mappings = MappingSet.load(EXAMPLES / "mappings")
    old = mappings.plan(
        received("com.example.person.updated", {"id": 1, "name": "old", "email": "e"}), time_ms=1
    )
    new = mappings.plan(received("com.example.person.updated", {"id": 1, "name": "new"}), time_ms=2)
    assert old is not None and new is not None
    [(_text, params)] = statements_for([new, old])
    [row] = params["rows"]
    assert row["props"] == {"id": 1, "name": "new", "email": "e"}
    assert row["first"] == 1 and row["time"] == 2

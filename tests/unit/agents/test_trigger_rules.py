"""Trigger rules: matching, templated input, and one idempotency key per event and rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from spine.agents.triggers import TriggerRule, TriggerRules
from spine.events.cloudevent import dedupe_id, parse_structured
from spine.events.log import ReceivedEvent
from spine.platform.errors import ConfigurationError


def received(
    data: dict[str, object], event_type: str = "com.example.person.hired"
) -> ReceivedEvent:
    event = parse_structured(
        {
            "specversion": "1.0",
            "id": "e1",
            "source": "/s",
            "type": event_type,
            "subject": "sub",
            "data": data,
        }
    )
    return ReceivedEvent(key=dedupe_id("acme", "/s", "e1"), tenant="acme", event=event)


def test_rules_match_by_type_pattern_and_values_and_render_the_input() -> None:
    rule = TriggerRule.model_validate(
        {
            "name": "r1",
            "event": "com.example.person.*",
            "when": {"data.role": "eng"},
            "agent": "chat",
            "input": {
                "prompt": "Hi {{ data.name }} ({{subject}}){{ data.nope }}",
                "n": "{{ data.n }}",
                "raw": 3,
            },
        }
    )
    event = received({"role": "eng", "name": "Dana", "n": {"k": [1]}})
    assert rule.matches(event)
    assert not rule.matches(received({"role": "ops"}))
    assert not rule.matches(received({"role": "eng"}, event_type="com.example.order.placed"))
    submission = rule.submission(event)
    assert submission.input == {"prompt": "Hi Dana (sub)", "n": {"k": [1]}, "raw": 3}
    assert submission.metadata["trigger"] == "r1"
    assert rule.idempotency_key(event) == f"trigger:r1:{event.key}"


def test_rule_files_are_checked(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("triggers:\n  - {name: x, event: t, agent: chat, input: {}}\n")
    (tmp_path / "b.yaml").write_text("triggers:\n  - {name: x, event: t, agent: chat, input: {}}\n")
    with pytest.raises(ConfigurationError, match="unique"):
        TriggerRules.load(tmp_path)
    (tmp_path / "b.yaml").write_text(
        "triggers:\n  - {name: y, event: t, agent: chat, input: {}, when: {'bad path!': 1}}\n"
    )
    with pytest.raises(ConfigurationError, match="when"):
        TriggerRules.load(tmp_path)

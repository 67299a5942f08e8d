"""The delegating client's choice of agent, over a literal `GET /a2a` discovery document."""

from __future__ import annotations

from typing import Any

import pytest

from examples.agents.delegating_client import AgentChoice, NoAgentForSkill, choose_agent

DISCOVERY: dict[str, Any] = {
    "agents": [
        {"name": "broken", "card_url": "http://gw/a2a/broken/.well-known/agent-card.json"},  # no card
        {
            "name": "echo",
            "card_url": "http://gw/a2a/echo/.well-known/agent-card.json",
            "card": {"name": "Echo Agent", "skills": [{"id": "echo"}, {"id": "shout"}]},
        },
        {
            "name": "notes",
            "card_url": "/a2a/notes/.well-known/agent-card.json",
            "card": {"name": "Notes Agent", "skills": [{"id": "remember"}, {"id": "recall"}]},
        },
        {
            "name": "notes-b",
            "card_url": "http://gw/a2a/notes-b/.well-known/agent-card.json",
            "card": {"name": "Notes Agent", "skills": [{"id": "remember"}]},
        },
    ]
}


def test_the_first_agent_offering_the_skill_is_chosen() -> None:
    assert choose_agent(DISCOVERY, "shout") == AgentChoice(
        "echo", "http://gw/a2a/echo/.well-known/agent-card.json"
    )
    # A relative card URL is resolved against the gateway.
    assert choose_agent(DISCOVERY, "remember", base_url="http://gw:8000/") == AgentChoice(
        "notes", "http://gw:8000/a2a/notes/.well-known/agent-card.json"
    )


@pytest.mark.parametrize("document", [DISCOVERY, {"agents": []}, {}, {"agents": "nope"}])
def test_a_skill_nobody_offers_is_an_error(document: dict[str, Any]) -> None:
    with pytest.raises(NoAgentForSkill, match="juggle"):
        choose_agent(document, "juggle")

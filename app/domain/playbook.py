"""Playbooks: the one definition of run and step statuses, step types, and when a playbook's
triggers match an incident (docs/playbooks.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

RUN_STATUSES = ("queued", "running", "awaiting_approval", "succeeded", "failed", "cancelled")
RUN_TERMINAL = ("succeeded", "failed", "cancelled")
STEP_STATUSES = ("pending", "running", "awaiting_approval", "succeeded", "failed", "cancelled")
STEP_DONE = ("succeeded", "failed", "cancelled")  # a step in one of these never runs again

STEP_TYPES = ("http_request", "block_user", "rate_limit", "notify", "wait", "set_status", "assign",
              "create_jira_issue", "run_task")
REMEDIATION_ACTIONS = ("block_user", "rate_limit")  # step types that call an integration's remediation endpoint
ON_FAILURE = ("stop", "continue")
TRIGGER_KINDS = ("auto", "manual")


@dataclass(frozen=True)
class IncidentFacts:
    """What a trigger looks at: the incident as the pipeline decided it, and its event's type."""

    severity: str
    category: str | None
    event_type: str | None
    source: str
    title: str
    tags: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def title_words(self) -> tuple[str, ...]:
        return tuple(_words(self.title))


_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str | None) -> list[str]:
    return _WORD.findall((text or "").lower())


def _bare(source: str) -> str:
    return source[4:] if source.startswith("llm-") else source


@dataclass(frozen=True)
class Trigger:
    """A playbook's triggers, prepared once to be checked against many incidents. Every condition
    given must hold (a list holds when any of its values does); no condition at all never matches
    (a playbook without triggers runs only by hand)."""

    severity: frozenset[str] = frozenset()
    category: frozenset[str] = frozenset()
    source: frozenset[str] = frozenset()  # bare names: `llm-shield` and `shield` name one integration
    event_type: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (type, its words)
    tags: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, triggers: Mapping[str, Any]) -> "Trigger":
        return cls(frozenset(triggers.get("severity") or ()),
                   frozenset(str(c).lower() for c in triggers.get("category") or ()),
                   frozenset(_bare(str(s)) for s in triggers.get("source") or ()),
                   tuple((str(t).lower(), tuple(_words(str(t)))) for t in triggers.get("event_type") or ()),
                   tuple((str(k), str(v)) for k, v in (triggers.get("tags") or {}).items()))

    @property
    def empty(self) -> bool:
        return not (self.severity or self.category or self.source or self.event_type or self.tags)

    def matches(self, facts: IncidentFacts) -> bool:
        if self.empty:
            return False
        if self.severity and facts.severity not in self.severity:
            return False
        if self.category and (facts.category or "").lower() not in self.category:
            return False
        if self.source and _bare(facts.source) not in self.source:
            return False
        if self.event_type and not self._event_type(facts):
            return False
        return all(str(facts.tags.get(k)) == v for k, v in self.tags)

    def _event_type(self, facts: IncidentFacts) -> bool:
        """A wanted type matches the event's own type, or (for senders whose type is generic, as
        Shield's `violation`) a title that names it: `prompt_injection` matches "Prompt Injection
        Detected" (its words, in that order)."""
        have = (facts.event_type or "").lower()
        title = facts.title_words
        for wanted, words in self.event_type:
            if wanted == have:
                return True
            if words and any(title[i:i + len(words)] == words for i in range(len(title) - len(words) + 1)):
                return True
        return False


def triggers_match(triggers: Mapping[str, Any], facts: IncidentFacts) -> bool:
    """`Trigger.of(triggers).matches(facts)`, for one check."""
    return Trigger.of(triggers).matches(facts)

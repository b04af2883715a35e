"""Playbooks: the one definition of run and step statuses, step types, and when a playbook's
triggers match an incident (docs/playbooks.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

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


_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str | None) -> list[str]:
    return _WORD.findall((text or "").lower())


def event_type_matches(wanted: Iterable[str], event_type: str | None, title: str) -> bool:
    """A wanted type matches the event's own type, or (for senders whose type is generic, as Shield's
    `violation`) a title that names it: `prompt_injection` matches "Prompt Injection Detected"."""
    have = (event_type or "").lower()
    title_words = _words(title)
    for item in wanted:
        if item.lower() == have:
            return True
        words = _words(item)
        if words and any(title_words[i:i + len(words)] == words for i in range(len(title_words))):
            return True
    return False


def source_matches(wanted: Iterable[str], source: str) -> bool:
    """`llm-shield` and `shield` name the same integration (as config.yaml's integrations do)."""
    bare = source[4:] if source.startswith("llm-") else source
    return any(w in (source, bare) or (w.startswith("llm-") and w[4:] == bare) for w in wanted)


def triggers_match(triggers: Mapping[str, Any], facts: IncidentFacts) -> bool:
    """Every condition given must hold (a list holds when any of its values does); no condition at
    all never matches (a playbook without triggers runs only by hand)."""
    conditions = {k: v for k, v in triggers.items() if v}
    if not conditions:
        return False
    if "severity" in conditions and facts.severity not in conditions["severity"]:
        return False
    if "category" in conditions and (facts.category or "").lower() not in {c.lower() for c in conditions["category"]}:
        return False
    if "source" in conditions and not source_matches(conditions["source"], facts.source):
        return False
    if "event_type" in conditions and not event_type_matches(conditions["event_type"], facts.event_type, facts.title):
        return False
    tags = conditions.get("tags") or {}
    return all(str(facts.tags.get(k)) == str(v) for k, v in tags.items())

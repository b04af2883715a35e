"""Dedup fingerprints: SHA-256 of `source | event_type | title | sorted resource/service ids`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Iterable

DEFAULT_FIELDS = ("source", "event_type", "title", "resource_ids")


def resource_ids(event: Mapping[str, Any]) -> list[str]:
    ids: set[str] = set()
    resource = event.get("resource")
    if isinstance(resource, Mapping) and resource.get("id"):
        ids.add(str(resource["id"]))
    service = event.get("service")
    if service:
        ids.add(str(service))
    for key in ("service", "service_id"):
        tags = event.get("tags")
        if isinstance(tags, Mapping) and tags.get(key):
            ids.add(str(tags[key]))
    return sorted(ids)


def fingerprint(event: Mapping[str, Any], fields: Iterable[str] = DEFAULT_FIELDS) -> str:
    """A stable dedup key. An explicit `fingerprint`/`dedup_key` given by the source wins."""
    explicit = event.get("dedup_key") or event.get("fingerprint")
    if explicit:
        return hashlib.sha256(f"{event.get('source', '')}|key|{explicit}".encode()).hexdigest()
    parts: list[str] = []
    for name in fields:
        if name == "resource_ids":
            parts.append(",".join(resource_ids(event)))
        else:
            value = event.get(name)
            parts.append("" if value is None else str(value).strip().lower() if name == "title" else str(value))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()

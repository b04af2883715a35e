"""The service catalog: services with owner team, tier, dependencies, runbook URL and the PromQL
templates enrichment queries. CRUD for the REST API and a YAML import."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import yaml
from sqlalchemy import select

from app.adapters.db import read_session, unit_of_work
from app.adapters.pipeline_models import Service
from app.domain.times import iso as _iso

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
TIERS = ("tier-0", "tier-1", "tier-2", "tier-3", "tier-4")
FIELDS = ("description", "owner_team", "tier", "dependencies", "runbook_url", "escalation_policy",
          "metrics_queries", "tags")


class ServiceNotFound(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"service {name!r} not found")
        self.name = name


class ServiceExists(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"service {name!r} already exists")
        self.name = name


class CatalogImportError(ValueError):
    """The YAML document is not a catalog; `details` says where."""

    def __init__(self, message: str, details: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.details = dict(details)


def service_to_dict(service: Service) -> dict[str, Any]:
    return {
        "name": service.name,
        "description": service.description,
        "owner_team": service.owner_team,
        "tier": service.tier,
        "dependencies": list(service.dependencies or []),
        "runbook_url": service.runbook_url,
        "escalation_policy": service.escalation_policy,
        "metrics_queries": dict(service.metrics_queries or {}),
        "tags": dict(service.tags or {}),
        "created_at": _iso(service.created_at),
        "updated_at": _iso(service.updated_at),
    }


def list_services(limit: int = 100, after: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Services by name; keyset pagination on the name."""
    with read_session() as session:
        query = select(Service).order_by(Service.name).limit(limit + 1)
        if after:
            query = query.where(Service.name > after)
        rows = list(session.scalars(query))
    next_cursor = rows[limit - 1].name if len(rows) > limit else None
    return [service_to_dict(r) for r in rows[:limit]], next_cursor


def get_service(name: str) -> dict[str, Any]:
    with read_session() as session:
        service = session.get(Service, name)
        if service is None:
            raise ServiceNotFound(name)
        return service_to_dict(service)


def create_service(data: Mapping[str, Any]) -> dict[str, Any]:
    """Create a service; ServiceExists when the name is taken."""
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        if session.get(Service, data["name"]) is not None:
            raise ServiceExists(data["name"])
        service = Service(name=data["name"], created_at=now, updated_at=now,
                          **{k: _default(k, data.get(k)) for k in FIELDS})
        session.add(service)
        session.flush()
        result = service_to_dict(service)
    _forget([result["name"]])
    return result


def update_service(name: str, data: Mapping[str, Any], replace: bool = False) -> dict[str, Any]:
    """PATCH (only the given fields) or PUT (`replace`: absent fields reset to their defaults)."""
    with unit_of_work() as session:
        service = session.scalars(select(Service).where(Service.name == name).with_for_update()).first()
        if service is None:
            raise ServiceNotFound(name)
        for key in FIELDS:
            if key in data or replace:
                setattr(service, key, _default(key, data.get(key)))
        service.updated_at = datetime.now(timezone.utc)
        session.flush()
        result = service_to_dict(service)
    _forget([name])
    return result


def delete_service(name: str) -> None:
    with unit_of_work() as session:
        service = session.get(Service, name)
        if service is None:
            raise ServiceNotFound(name)
        session.delete(service)
    _forget([name])


def _forget(names: Iterable[str]) -> None:
    """Drop the enrichment cache entries of changed services (after commit), so the pipeline sees
    a catalog edit at once instead of after the cache TTL."""
    from app.adapters.redis_client import get_redis

    client = get_redis()
    keys = [f"im:enrich:service:{n}" for n in names]
    if client is None or not keys:
        return
    try:
        client.delete(*keys)
    except Exception:  # the TTL bounds how stale the cache can get
        log.warning("could not invalidate the service cache", exc_info=True, extra={"services": keys[:20]})


def _default(key: str, value: Any) -> Any:
    if value is not None:
        return value
    return {"description": "", "dependencies": [], "metrics_queries": {}, "tags": {}}.get(key)


def validate_service(data: Any, partial: bool = False) -> dict[str, list[str]]:
    """Field errors of one service document ({} when valid). Used by the YAML import; REST uses
    the marshmallow schema with the same rules."""
    errors: dict[str, list[str]] = {}
    if not isinstance(data, Mapping):
        return {"_schema": ["expected a mapping"]}
    unknown = set(data) - set(FIELDS) - {"name"}
    for key in sorted(unknown):
        errors[key] = ["unknown field"]
    name = data.get("name")
    if not partial or "name" in data:
        if not isinstance(name, str) or not NAME_RE.match(name):
            errors["name"] = ["required: letters, digits, '.', '_' or '-', at most 200 characters"]
    for key in ("description", "owner_team", "runbook_url", "escalation_policy"):
        if data.get(key) is not None and not isinstance(data[key], str):
            errors[key] = ["expected a string"]
    if data.get("runbook_url") and isinstance(data["runbook_url"], str) and \
            not data["runbook_url"].startswith(("http://", "https://")):
        errors["runbook_url"] = ["expected an http(s) URL"]
    if data.get("tier") is not None and data["tier"] not in TIERS:
        errors["tier"] = [f"expected one of {', '.join(TIERS)}"]
    deps = data.get("dependencies")
    if deps is not None and (not isinstance(deps, list) or not all(isinstance(d, str) and d for d in deps)):
        errors["dependencies"] = ["expected a list of service names"]
    queries = data.get("metrics_queries")
    if queries is not None and (not isinstance(queries, Mapping) or
                                not all(isinstance(k, str) and isinstance(v, str) and v for k, v in queries.items())):
        errors["metrics_queries"] = ["expected a mapping of metric name to PromQL template"]
    tags = data.get("tags")
    if tags is not None and not isinstance(tags, Mapping):
        errors["tags"] = ["expected a mapping"]
    return errors


@dataclass(frozen=True)
class ImportResult:
    created: list[str]
    updated: list[str]


def import_yaml(text: str) -> ImportResult:
    """Upsert every service of a YAML catalog (`services: [...]` or a bare list). All or nothing:
    any invalid entry rejects the whole document, naming each problem."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogImportError(f"the body is not valid YAML: {exc}", {"_schema": [str(exc)]}) from None
    entries = document.get("services") if isinstance(document, Mapping) else document
    if not isinstance(entries, list) or not entries:
        raise CatalogImportError("expected a YAML list of services, or a mapping with a `services` list",
                                 {"services": ["expected a non-empty list"]})
    details: dict[str, Any] = {}
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        errors = validate_service(entry)
        if not errors and entry["name"] in seen:
            errors = {"name": [f"{entry['name']!r} appears twice"]}
        if errors:
            details[f"services[{i}]"] = errors
        elif isinstance(entry, Mapping):
            seen.add(entry["name"])
    if details:
        raise CatalogImportError(f"{len(details)} invalid service(s) in the catalog; nothing was imported", details)
    created: list[str] = []
    updated: list[str] = []
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        existing = {s.name: s for s in session.scalars(
            select(Service).where(Service.name.in_(seen)).order_by(Service.name).with_for_update())}
        for entry in entries:
            service = existing.get(entry["name"])
            if service is None:
                session.add(Service(name=entry["name"], created_at=now, updated_at=now,
                                    **{k: _default(k, entry.get(k)) for k in FIELDS}))
                created.append(entry["name"])
            else:
                for key in FIELDS:
                    setattr(service, key, _default(key, entry.get(key)))
                service.updated_at = now
                updated.append(entry["name"])
    _forget(created + updated)
    return ImportResult(created=created, updated=updated)


def lookup(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The catalog entries of these services (absent names are left out)."""
    wanted = sorted({n for n in names if n})
    if not wanted:
        return {}
    with read_session() as session:
        return {s.name: service_to_dict(s) for s in session.scalars(select(Service).where(Service.name.in_(wanted)))}

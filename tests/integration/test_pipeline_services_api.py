"""The service catalog over REST (CRUD, YAML import) and the correlation endpoints' bad input."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from app.adapters.db import read_session
from app.adapters.pipeline_models import Service

pytestmark = pytest.mark.integration

CHAT = {"name": "chat-api", "description": "Chat completions", "owner_team": "llm-serving", "tier": "tier-0",
        "dependencies": ["vector-db"], "runbook_url": "https://runbooks.example.com/chat",
        "escalation_policy": "serving",
        "metrics_queries": {"rps": 'sum(rate(requests_total{service="{service}"}[1m]))'},
        "tags": {"env": "prod"}}


def _count() -> int:
    with read_session() as session:
        return int(session.scalar(select(func.count(Service.name))) or 0)


@pytest.fixture
def headers(make_key: Any) -> dict[str, str]:
    return {"X-API-Key": make_key("incident:read", "incident:write")}


def test_crud(client, headers):
    created = client.post("/api/v1/services", json=CHAT, headers=headers)
    assert created.status_code == 201 and created.headers["Location"] == "/api/v1/services/chat-api"
    body = created.get_json()
    assert {k: body[k] for k in CHAT} == CHAT and body["created_at"]
    assert client.post("/api/v1/services", json=CHAT, headers=headers).status_code == 409

    assert client.get("/api/v1/services/chat-api", headers=headers).get_json()["owner_team"] == "llm-serving"
    patched = client.patch("/api/v1/services/chat-api", json={"tier": "tier-1"}, headers=headers).get_json()
    assert patched["tier"] == "tier-1" and patched["owner_team"] == "llm-serving"
    replaced = client.put("/api/v1/services/chat-api", json={"owner_team": "platform"}, headers=headers).get_json()
    assert replaced["owner_team"] == "platform" and replaced["tier"] is None and replaced["dependencies"] == []

    for i in range(3):
        client.post("/api/v1/services", json={"name": f"svc-{i}"}, headers=headers)
    page = client.get("/api/v1/services?limit=2", headers=headers).get_json()
    assert [s["name"] for s in page["items"]] == ["chat-api", "svc-0"] and page["next_cursor"] == "svc-0"
    rest = client.get(f"/api/v1/services?limit=2&cursor={page['next_cursor']}", headers=headers).get_json()
    assert [s["name"] for s in rest["items"]] == ["svc-1", "svc-2"] and rest["next_cursor"] is None

    assert client.delete("/api/v1/services/chat-api", headers=headers).status_code == 204
    missing = client.get("/api/v1/services/chat-api", headers=headers)
    assert missing.status_code == 404 and missing.get_json()["error"]["details"] == {"name": "chat-api"}
    assert client.delete("/api/v1/services/chat-api", headers=headers).status_code == 404


def test_yaml_import_upserts(client, headers):
    client.post("/api/v1/services", json={"name": "vector-db", "owner_team": "old"}, headers=headers)
    document = "services:\n  - name: vector-db\n    owner_team: data\n  - name: gpu-pool\n    tier: tier-0\n"
    response = client.post("/api/v1/services/import", data=document, headers={**headers, "Content-Type": "text/yaml"})
    assert response.status_code == 200
    assert response.get_json() == {"created": ["gpu-pool"], "updated": ["vector-db"]}
    assert client.get("/api/v1/services/vector-db", headers=headers).get_json()["owner_team"] == "data"


@pytest.mark.parametrize("body, field, message", [
    ({"owner_team": "x"}, "name", "Missing data"),
    ({"name": "bad name!"}, "name", "letters"),
    ({"name": "a", "tier": "gold"}, "tier", "tier-0"),
    ({"name": "a", "runbook_url": "ftp://x"}, "runbook_url", "URL"),
    ({"name": "a", "dependencies": "b"}, "dependencies", "list"),
    ({"name": "a", "dependencies": ["a"]}, "dependencies", "itself"),
    ({"name": "a", "metrics_queries": {"rps": 5}}, "metrics_queries", ""),
    ({"name": "a", "colour": "red"}, "colour", "Unknown"),
])
def test_create_rejects_bad_input_and_writes_nothing(client, headers, body, field, message):
    response = client.post("/api/v1/services", json=body, headers=headers)
    assert response.status_code == 422
    details = response.get_json()["error"]["details"]
    assert field in details and message in str(details[field])
    assert _count() == 0


def test_bad_requests(client, headers, make_key):
    malformed = client.post("/api/v1/services", data="{nope", headers={**headers, "Content-Type": "application/json"})
    assert malformed.status_code == 400
    wrong_type = client.post("/api/v1/services", data="name: a", headers={**headers, "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    assert client.post("/api/v1/services", json=CHAT).status_code == 401
    reader = {"X-API-Key": make_key("incident:read")}
    forbidden = client.post("/api/v1/services", json=CHAT, headers=reader)
    assert forbidden.status_code == 403 and "incident:write" in forbidden.get_json()["error"]["message"]
    renamed = client.post("/api/v1/services", json={"name": "a"}, headers=headers)
    assert renamed.status_code == 201
    rename = client.patch("/api/v1/services/a", json={"name": "b"}, headers=headers)
    assert rename.status_code == 422 and "renamed" in rename.get_json()["error"]["message"]
    assert client.patch("/api/v1/services/zz", json={"tier": "tier-1"}, headers=headers).status_code == 404
    assert client.get("/api/v1/services?limit=0", headers=headers).status_code == 422
    assert _count() == 1


@pytest.mark.parametrize("document, content_type, status, field", [
    ("services: [name: a", "application/yaml", 400, "_schema"),
    ("", "application/yaml", 400, None),
    ("services: []", "application/yaml", 422, "services"),
    ("just a string", "application/yaml", 422, "services"),
    ("services:\n  - name: good\n  - name: bad one\n", "application/yaml", 422, "services[1]"),
    ("services:\n  - name: twice\n  - name: twice\n", "application/yaml", 422, "services[1]"),
    ("services:\n  - name: a\n    tier: gold\n", "application/yaml", 422, "services[0]"),
    ("services:\n  - name: a\n", "application/xml", 415, "accepted"),
])
def test_yaml_import_rejects_bad_documents_and_writes_nothing(client, headers, document, content_type, status, field):
    response = client.post("/api/v1/services/import", data=document, headers={**headers, "Content-Type": content_type})
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert error["message"]
    if field:
        assert field in error["details"]
    assert _count() == 0


def test_correlation_endpoints_bad_input(client, headers):
    assert client.get("/api/v1/incidents/INC-20990101-00001/related", headers=headers).status_code == 404
    assert client.get("/api/v1/correlation-groups/CG-nope", headers=headers).status_code == 404
    assert client.get("/api/v1/correlation-groups?limit=501", headers=headers).status_code == 422
    bad_cursor = client.get("/api/v1/correlation-groups?cursor=%%%", headers=headers)
    assert bad_cursor.status_code == 422 and "cursor" in bad_cursor.get_json()["error"]["details"]
    assert client.get("/api/v1/correlation-groups").status_code == 401
    assert client.get("/api/v1/correlation-groups", headers=headers).get_json() == {"items": [], "next_cursor": None}

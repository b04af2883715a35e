"""GraphQL over HTTP (`POST /graphql`): the documents' queries verbatim, the same answers as REST,
pagination, the statement bound of nested fields, mutations, credentials and limits."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
from sqlalchemy import event, insert

from app.adapters.db import get_engine, unit_of_work
from app.adapters.models import Event, Incident, TimelineEntry
from app.adapters.pipeline_models import CorrelationGroup, CorrelationMember

# integration guide §5, verbatim
GOVERNANCE_QUERY = """
query GetIncidentReport {
  incidents(
    filter: {
      dateRange: { start: "2025-11-01T00:00:00Z", end: "2025-11-30T23:59:59Z" }
      severity: [P0, P1]
      category: [security, compliance]
    }
    pagination: { page: 1, pageSize: 100 }
  ) {
    edges {
      node {
        id
        severity
        category
        status
        created_at
        resolved_at
        resolution {
          root_cause
          actions_taken
        }
        sla {
          acknowledgment_breached
          resolution_breached
        }
      }
    }
    pageInfo {
      hasNextPage
      endCursor
    }
    totalCount
  }

  incidentMetrics(
    timeRange: { start: "2025-11-01T00:00:00Z", end: "2025-11-30T23:59:59Z" }
    groupBy: [SEVERITY, CATEGORY]
  ) {
    totalIncidents
    bySeverity {
      severity
      count
    }
    averageMTTR
    averageMTTA
    slaCompliance
  }
}
"""

# the guide's curl check, verbatim
CURL_QUERY = '{"query": "{ incidents { edges { node { id } } } }"}'

# reference README, "GraphQL API", verbatim
README_QUERY = """
# Query incidents with advanced filtering
query GetIncidents {
  incidents(
    first: 20
    filter: {
      severity: [P0, P1]
      status: [NEW, ACKNOWLEDGED]
      environment: [PRODUCTION]
    }
    orderBy: { field: CREATED_AT, direction: DESC }
  ) {
    edges {
      node {
        id
        title
        severity
        status
        assignedTo {
          name
          email
        }
        sla {
          resolutionDeadline
          resolutionBreached
        }
      }
    }
    pageInfo {
      hasNextPage
      endCursor
    }
  }
}
"""

NOVEMBER = datetime(2025, 11, 3, 9, 0, tzinfo=timezone.utc)


def gql(client: Any, key: str | None, query: str, variables: dict[str, Any] | None = None) -> Any:
    headers = {"X-API-Key": key} if key else {}
    return client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)


def ok(client: Any, key: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    response = gql(client, key, query, variables)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert "errors" not in body, body
    return body["data"]


def seed(count: int, start: datetime = NOVEMBER, **overrides: Any) -> list[str]:
    """Incidents written directly (created in the past, which no door allows), one per minute."""
    rows = []
    for i in range(count):
        created = start + timedelta(minutes=i)
        severity = ["P0", "P1", "P2", "P3"][i % 4]
        category = ["security", "compliance", "performance"][i % 3]
        status = ["NEW", "ACKNOWLEDGED", "RESOLVED"][i % 3]
        row = {
            "id": f"INC-{created:%Y%m%d}-{i + 1:05d}", "title": f"incident {i}", "description": "d",
            "source": "sentinel", "severity": severity, "category": category, "status": status,
            "fingerprint": f"fp-{start:%s}-{i}", "event_count": 1, "first_seen": created, "last_seen": created,
            "created_at": created, "updated_at": created, "tags": {"environment": "production" if i % 2 else "staging"},
            "acknowledged_at": created + timedelta(seconds=60) if status != "NEW" else None,
            "resolved_at": created + timedelta(seconds=600) if status == "RESOLVED" else None,
            "root_cause": "disk full" if status == "RESOLVED" else None,
            "actions_taken": ["restarted"] if status == "RESOLVED" else None,
            "resolved_by": "ops" if status == "RESOLVED" else None,
            "sla_acknowledge_by": created + timedelta(minutes=5), "sla_resolve_by": created + timedelta(hours=1),
            "sla_acknowledge_breached": i % 5 == 0, "sla_resolve_breached": False, "escalation_level": 0,
            "assignee": "alice" if i % 2 else None,
            **overrides,
        }
        rows.append(row)
    with unit_of_work() as session:
        session.execute(insert(Incident), rows)
    return [r["id"] for r in rows]


def test_the_guides_governance_query_runs_verbatim_and_matches_rest(client, admin_key):
    seed(30)
    seed(3, start=datetime(2025, 12, 2, tzinfo=timezone.utc))  # outside the range
    data = ok(client, admin_key, GOVERNANCE_QUERY)
    listed = data["incidents"]
    expected_ids = {r["id"] for r in client.get("/api/v1/incidents?limit=500&severity=P0,P1&category=security,"
                                                 "compliance&created_after=2025-11-01T00:00:00Z&created_before="
                                                 "2025-11-30T23:59:59Z", headers={"X-API-Key": admin_key})
                    .get_json()["items"]}
    assert {e["node"]["id"] for e in listed["edges"]} == expected_ids
    assert listed["totalCount"] == len(expected_ids) > 0
    assert listed["pageInfo"]["hasNextPage"] is False
    for edge in listed["edges"]:
        node = edge["node"]
        rest = client.get(f"/api/v1/incidents/{node['id']}", headers={"X-API-Key": admin_key}).get_json()
        assert node["severity"] == rest["severity"] and node["status"] == rest["status"]
        assert node["category"] == rest["category"] and node["created_at"] == rest["created_at"]
        assert node["resolved_at"] == rest["resolved_at"]
        assert node["sla"] == {k: rest["sla"][k] for k in ("acknowledgment_breached", "resolution_breached")}
        if rest["resolution"]:
            assert node["resolution"] == {"root_cause": rest["resolution"]["root_cause"],
                                          "actions_taken": rest["resolution"]["actions_taken"]}
        else:
            assert node["resolution"] is None
    metrics = data["incidentMetrics"]
    rest = client.get("/api/v1/metrics/incidents?from=2025-11-01T00:00:00Z&to=2025-12-01T00:00:00Z&group_by=severity",
                      headers={"X-API-Key": admin_key}).get_json()
    assert metrics["totalIncidents"] == rest["totals"]["count"] == 30
    assert metrics["averageMTTA"] == rest["totals"]["mtta_secs"]["mean"]
    assert metrics["averageMTTR"] == rest["totals"]["mttr_secs"]["mean"]
    assert metrics["slaCompliance"] == rest["totals"]["sla"]["compliance"]
    assert metrics["bySeverity"] == [{"severity": g["key"], "count": g["count"]} for g in rest["groups"]]


def test_the_guides_curl_query_and_the_readme_query_run_verbatim(client, make_key):
    from app.services.escalation_config import USER, create_object

    key = make_key("incident:read")
    create_object(USER, {"name": "alice", "full_name": "Alice Doe", "email": "alice@example.com"})
    ids = seed(12, start=datetime.now(timezone.utc) - timedelta(hours=1))
    from app.services.auth import create_token

    oauth_token = create_token("governance", permissions=["incident:read"])  # the guide sends a JWT
    for credential in (key, oauth_token):
        response = client.post("/graphql", data=CURL_QUERY, headers={"Authorization": f"Bearer {credential}",
                                                                      "Content-Type": "application/json"})
        assert response.status_code == 200
        assert {e["node"]["id"] for e in response.get_json()["data"]["incidents"]["edges"]} == set(ids)
    data = ok(client, key, README_QUERY)
    nodes = [e["node"] for e in data["incidents"]["edges"]]
    # P0/P1, NEW/ACKNOWLEDGED, environment tag "production" in any case; newest first
    want = [i for i in reversed(range(12)) if i % 4 in (0, 1) and i % 3 in (0, 1) and i % 2]
    assert [n["id"] for n in nodes] == [ids[i] for i in want]
    for node in nodes:
        assert node["assignedTo"] == {"name": "Alice Doe", "email": "alice@example.com"}
        assert node["sla"]["resolutionDeadline"].endswith("Z") and node["sla"]["resolutionBreached"] is False


def test_pagination_visits_every_incident_once(client, admin_key):
    ids = seed(23)
    seen: list[str] = []
    after = None
    pages = 0
    query = """query Page($after: String, $dir: SortDirection) { incidents(first: 5, after: $after,
               orderBy: {direction: $dir}) { totalCount edges { cursor node { id } }
               pageInfo { hasNextPage endCursor } } }"""
    for direction in ("DESC", "ASC"):
        seen, after, pages = [], None, 0
        while True:
            page = ok(client, admin_key, query, {"after": after, "dir": direction})["incidents"]
            assert page["totalCount"] == 23
            seen += [e["node"]["id"] for e in page["edges"]]
            pages += 1
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
        assert pages == 5
        assert seen == (sorted(ids, reverse=True) if direction == "DESC" else sorted(ids))
    by_page = []
    for number in (1, 2, 3):
        page = ok(client, admin_key, "query($p: Int) { incidents(pagination: {page: $p, pageSize: 10}) "
                                     "{ edges { node { id } } pageInfo { hasNextPage } } }", {"p": number})
        by_page += [e["node"]["id"] for e in page["incidents"]["edges"]]
    assert by_page == sorted(ids, reverse=True)


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every SQL statement the process sends while the test runs."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    yield seen
    event.remove(engine, "before_cursor_execute", count)


NESTED = """query Nested($n: Int) { incidents(first: $n) { edges { node {
  id title assignedTo { name }
  timeline { kind actor at }
  events(first: 3) { eventId title }
  correlationGroup { id score members { incidentId incident { id title } } }
} } } }"""


def _nested_rows(ids: list[str]) -> None:
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        session.execute(insert(TimelineEntry), [{"incident_id": i, "at": now, "actor": "t", "kind": k}
                                                for i in ids for k in ("created", "assigned")])
        session.execute(insert(Event), [{"source": "sentinel", "event_id": f"{i}-{n}", "incident_id": i,
                                         "fingerprint": "f", "title": f"e{n}", "payload": {}, "received_at": now}
                                        for i in ids for n in range(5)])
        for g in range(0, len(ids), 10):
            members = ids[g:g + 10]
            session.execute(insert(CorrelationGroup), [{"id": f"grp-{g}", "root_incident_id": members[0], "score": 0.9,
                                                        "reasons": ["same service"], "member_count": len(members),
                                                        "created_at": now, "updated_at": now}])
            session.execute(insert(CorrelationMember), [{"incident_id": m, "group_id": f"grp-{g}", "score": 0.9,
                                                         "reasons": [], "added_at": now} for m in members])


def test_nested_fields_of_100_incidents_run_a_bounded_number_of_statements(client, admin_key, statements):
    ids = seed(100)
    _nested_rows(ids)
    ok(client, admin_key, NESTED, {"n": 10})  # warm: the key lookup is cached after this
    statements.clear()
    small = ok(client, admin_key, NESTED, {"n": 10})
    for_ten = len(statements)
    statements.clear()
    data = ok(client, admin_key, NESTED, {"n": 100})
    for_hundred = len(statements)
    nodes = [e["node"] for e in data["incidents"]["edges"]]
    assert len(nodes) == 100 and len(small["incidents"]["edges"]) == 10
    assert all(len(n["timeline"]) == 2 and len(n["events"]) == 3 for n in nodes)
    assert all(len(n["correlationGroup"]["members"]) == 10 for n in nodes)
    assert all(m["incident"]["id"] == m["incidentId"] for n in nodes for m in n["correlationGroup"]["members"])
    # one listing + timelines (2) + events (2) + groups (2) + members (2) + assignees (1): no statement per incident
    assert for_hundred == for_ten, statements
    assert for_hundred <= 12, statements


def test_mutations_use_the_rest_rules(client, make_key):
    writer = make_key("incident:write", "incident:read")
    reader = make_key("incident:read")
    created = ok(client, writer, """mutation { createIncident(input: {title: "GPU down", severity: "P1",
        category: security, source: "manual", eventId: "gql-1"}) { id severity status category } }""")
    incident = created["createIncident"]
    assert incident["severity"] == "P1" and incident["status"] == "NEW" and incident["category"] == "security"
    assert client.get(f"/api/v1/incidents/{incident['id']}", headers={"X-API-Key": reader}).status_code == 200
    acked = ok(client, writer, 'mutation($id: ID!) { acknowledgeIncident(id: $id, actor: "bob") '
                               '{ status acknowledgedBy } }', {"id": incident["id"]})
    assert acked["acknowledgeIncident"] == {"status": "ACKNOWLEDGED", "acknowledgedBy": "bob"}
    again = gql(client, writer, 'mutation($id: ID!) { acknowledgeIncident(id: $id) { status } }',
                {"id": incident["id"]}).get_json()
    assert again["errors"][0]["extensions"]["code"] == "illegal_transition"  # REST answers 409
    updated = ok(client, writer, 'mutation($id: ID!) { updateIncident(id: $id, input: {severity: P0, '
                                 'assignee: "carol"}) { severity assignee severityReason } }', {"id": incident["id"]})
    assert updated["updateIncident"]["severity"] == "P0" and updated["updateIncident"]["assignee"] == "carol"
    assert updated["updateIncident"]["severityReason"]["decided_by"] == "manual"
    fed = ok(client, writer, 'mutation($id: ID!) { submitFeedback(incidentId: $id, input: {severity: P0, '
                             'category: "security"}) { incidentId severity category } }', {"id": incident["id"]})
    assert fed["submitFeedback"] == {"incidentId": incident["id"], "severity": "P0", "category": "security"}
    resolved = ok(client, writer, 'mutation($id: ID!) { resolveIncident(id: $id, input: {rootCause: "bad driver", '
                                  'actionsTaken: ["reboot"]}) { status resolution { root_cause actionsTaken } } }',
                  {"id": incident["id"]})
    assert resolved["resolveIncident"] == {"status": "RESOLVED",
                                           "resolution": {"root_cause": "bad driver", "actionsTaken": ["reboot"]}}
    bad = gql(client, writer, 'mutation { createIncident(input: {title: "", severity: "P1"}) { id } }').get_json()
    assert bad["errors"][0]["extensions"]["code"] == "validation_failed"
    assert "title" in bad["errors"][0]["extensions"]["details"]
    # a read-only credential cannot mutate; a write-only one cannot read
    assert gql(client, reader, 'mutation { createIncident(input: {title: "x", severity: "P1"}) { id } }'
               ).status_code == 403
    assert gql(client, make_key("incident:write"), "{ incidents { totalCount } }").status_code == 403


def test_no_credential_or_a_bad_one_is_401_before_anything_runs(client):
    for headers in ({}, {"X-API-Key": "im_nope"}, {"Authorization": "Bearer not.a.jwt"}):
        response = client.post("/graphql", json={"query": "{ incidents { totalCount } }"}, headers=headers)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthenticated"
    assert client.get("/graphql?query={incidents{totalCount}}").status_code == 401
    assert client.get("/graphql/playground").status_code == 401


def test_over_deep_costly_aliased_batched_and_bad_documents_are_refused_with_a_message(client, admin_key):
    deep = "{ incidents { edges { node { correlationGroup { members { incident { correlationGroup { members " \
           "{ incident { correlationGroup { members { incident { id } } } } } } } } } } } } }"
    body = gql(client, admin_key, deep).get_json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "query_too_deep"
    assert "depth 13 exceeds the limit of 10" in body["errors"][0]["message"]
    costly = "{ incidents(first: 500) { edges { node { events(first: 500) { id title payload } } } } }"
    body = gql(client, admin_key, costly).get_json()
    assert "data" not in body and body["errors"][0]["extensions"]["code"] == "query_too_costly"
    assert "exceeds the limit of 50000" in body["errors"][0]["message"]
    aliases = "{ " + " ".join(f"a{i}: incidents(first: 1) {{ totalCount }}" for i in range(25)) + " }"
    body = gql(client, admin_key, aliases).get_json()
    assert body["errors"][0]["extensions"]["code"] == "too_many_aliases"
    body = gql(client, admin_key, "{ incidents { nope } }").get_json()
    assert "data" not in body and "Cannot query field 'nope'" in body["errors"][0]["message"]
    body = gql(client, admin_key, "{ incidents(").get_json()
    assert body["errors"][0]["extensions"]["code"] == "syntax_error"
    batch = client.post("/graphql", json=[{"query": "{ incidents { totalCount } }"}] * 2,
                        headers={"X-API-Key": admin_key})
    assert batch.status_code == 400 and batch.get_json()["error"]["code"] == "batching_disabled"
    body = gql(client, admin_key, "query { incidents(first: 501) { totalCount } }").get_json()
    assert body["errors"][0]["extensions"]["details"] == {"first": ["must be between 1 and 500"]}
    body = gql(client, admin_key, "subscription { newIncidents { id } }").get_json()
    assert body["errors"][0]["extensions"]["code"] == "subscription_over_http"
    assert client.get("/graphql", query_string={"query": 'mutation { acknowledgeIncident(id: "x") { id } }'},
                      headers={"X-API-Key": admin_key}).status_code == 405


def test_introspection_is_on_by_default_and_a_setting_turns_it_off(client, admin_key, monkeypatch):
    from app.config import reset_settings_cache

    body = ok(client, admin_key, "{ __schema { queryType { name } } }")
    assert body["__schema"]["queryType"]["name"] == "Query"
    monkeypatch.setenv("GRAPHQL_INTROSPECTION", "false")
    reset_settings_cache()
    try:
        body = gql(client, admin_key, "{ __schema { queryType { name } } }").get_json()
        assert "data" not in body and body["errors"][0]["extensions"]["code"] == "introspection_disabled"
        assert ok(client, admin_key, "{ incidents { totalCount } }")["incidents"]["totalCount"] == 0
    finally:
        monkeypatch.delenv("GRAPHQL_INTROSPECTION")
        reset_settings_cache()


def test_configuration_objects_and_correlation_groups(client, admin_key):
    from app.services.escalation_config import POLICY, SCHEDULE, TEAM, USER, create_object, load

    for kind, document in ((USER, {"name": "alice", "email": "alice@example.com"}),
                           (SCHEDULE, {"name": "primary", "time_zone": "UTC", "layers": [
                               {"name": "l1", "participants": ["alice"], "start": "2026-01-01"}]}),
                           (POLICY, {"name": "default", "levels": [{"escalate_after_secs": 300, "targets": [
                               {"type": "schedule", "id": "primary"}]}]}),
                           (TEAM, {"name": "ml", "members": ["alice"], "schedule": "primary",
                                   "escalation_policy": "default"})):
        create_object(kind, load(kind, document))
    ids = seed(10)
    _nested_rows(ids)
    data = ok(client, admin_key, """{ teams { name schedule escalationPolicy }
        schedules { name onCall { user } } escalationPolicies { name levels }
        correlationGroups { id memberCount } correlationGroup(id: "grp-0") { members { incidentId root } }
        team(name: "nope") { name } incident(id: "INC-00000000-00000") { id } }""")
    assert data["teams"] == [{"name": "ml", "schedule": "primary", "escalationPolicy": "default"}]
    assert data["schedules"] == [{"name": "primary", "onCall": {"user": "alice"}}]
    assert data["escalationPolicies"][0]["name"] == "default"
    assert data["correlationGroups"] == [{"id": "grp-0", "memberCount": 10}]
    assert data["correlationGroup"]["members"][0] == {"incidentId": ids[0], "root": True}
    assert data["team"] is None and data["incident"] is None


@pytest.fixture
def embedded(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The embedded default: a SQLite file, no Redis."""
    from api import create_app
    from app.adapters.migrate import upgrade
    from tests.conftest import _reset_process_state

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'im.db'}")
    monkeypatch.delenv("REDIS_URL")
    _reset_process_state()
    upgrade()
    yield create_app().test_client()
    monkeypatch.undo()
    _reset_process_state()


def test_the_embedded_default_answers_the_same_queries(test_env, embedded):
    from app.services.auth import create_api_key

    key = create_api_key("sqlite", ["admin"], 0, None).key
    ids = seed(20)
    _nested_rows(ids)
    data = ok(embedded, key, GOVERNANCE_QUERY)
    assert data["incidents"]["totalCount"] == len(data["incidents"]["edges"]) > 0
    assert data["incidentMetrics"]["totalIncidents"] == 20
    nested = ok(embedded, key, NESTED, {"n": 20})["incidents"]["edges"]
    assert all(len(e["node"]["events"]) == 3 and len(e["node"]["timeline"]) == 2 for e in nested)
    environment = ok(embedded, key, '{ incidents(filter: {environment: [PRODUCTION]}) { totalCount } }')
    assert environment["incidents"]["totalCount"] == 10


def test_run_playbook_queues_a_run_as_rest_does(client, make_key):
    writer = make_key("incident:write", "incident:read")
    headers = {"X-API-Key": writer}
    assert client.post("/api/v1/playbooks", headers=headers, json={"name": "ack-it", "steps": [
        {"name": "ack", "type": "set_status", "params": {"status": "ACKNOWLEDGED"}}]}).status_code == 201
    incident = client.post("/api/v1/incidents", headers=headers,
                           json={"title": "Model server down", "severity": "P1", "source": "monitoring"}).get_json()
    run = ok(client, writer, 'mutation($id: ID!) { runPlaybook(incidentId: $id, playbook: "ack-it") '
                             '{ id playbook incidentId trigger status steps } }', {"id": incident["id"]})["runPlaybook"]
    assert run["playbook"] == "ack-it" and run["incidentId"] == incident["id"] and run["trigger"] == "manual"
    rest = client.get(f"/api/v1/playbook-runs/{run['id']}", headers=headers).get_json()
    assert rest["status"] == run["status"] and [s["name"] for s in rest["steps"]] == [s["name"] for s in run["steps"]]
    missing = gql(client, writer, 'mutation($id: ID!) { runPlaybook(incidentId: $id, playbook: "nope") { id } }',
                  {"id": incident["id"]}).get_json()
    assert missing["errors"][0]["extensions"]["code"] == "not_found"

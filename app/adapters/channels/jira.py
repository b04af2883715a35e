"""JIRA REST v3 issue creation as the integration guide §7: project and issue type by category,
summary `[INC-…] title`, the description as Atlassian Document Format, priority by severity, labels,
the incident id in a custom field."""

from __future__ import annotations

import base64
from typing import Any, Mapping

from app.adapters import http_client
from app.adapters.channels import Sent, counted, json_body
from app.config.outbound import OutboundSettings


def adf(text: str) -> dict[str, Any]:
    """Plain text as an ADF document: one paragraph per block of text (ADF refuses empty text nodes)."""
    paragraphs = [p for p in (text or "").split("\n\n") if p.strip()] or ["(no description)"]
    return {"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": p}]} for p in paragraphs]}


def issue(incident: Mapping[str, Any], outbound: OutboundSettings) -> dict[str, Any]:
    jira = outbound.jira
    project = jira.project(incident)
    severity = str(incident.get("severity"))
    fields: dict[str, Any] = {
        "project": {"key": project.project_key},
        "summary": f"[{incident.get('id')}] {incident.get('title')}",
        "description": adf(str(incident.get("description") or "")),
        "issuetype": {"name": project.issue_type},
        "priority": {"name": jira.priority_names.get(severity, "Medium")},
        "labels": [*jira.labels, *([str(incident["category"]).lower()] if incident.get("category") else [])],
        jira.incident_id_field: incident.get("id"),
    }
    if jira.severity_field:
        fields[jira.severity_field] = {"value": jira.severity_names.get(severity, severity)}
    return {"fields": fields}


def create_issue(incident: Mapping[str, Any], outbound: OutboundSettings) -> Sent:
    """POST /rest/api/3/issue with basic auth (user + API token); the reference is the issue key."""
    jira = outbound.jira

    def go() -> Sent:
        credentials = base64.b64encode(f"{jira.username}:{jira.api_token}".encode()).decode()
        answer = http_client.send("jira", "POST", f"{jira.base_url}/rest/api/3/issue",
                                  content=json_body(issue(incident, outbound)),
                                  headers={"Content-Type": "application/json", "Accept": "application/json",
                                           "Authorization": f"Basic {credentials}"})
        created = answer.json() or {}
        return Sent("jira", jira.project(incident).project_key, answer.status, answer.attempts,
                    {"key": created.get("key"), "id": created.get("id")})

    return counted("jira", go)


def _auth(outbound: OutboundSettings) -> dict[str, str]:
    jira = outbound.jira
    credentials = base64.b64encode(f"{jira.username}:{jira.api_token}".encode()).decode()
    return {"Content-Type": "application/json", "Accept": "application/json", "Authorization": f"Basic {credentials}"}


COMMENTS = {"incident_resolved": "resolved", "incident_closed": "closed", "incident_acknowledged": "acknowledged"}


def comment_body(incident: Mapping[str, Any], event: str, actor: str) -> dict[str, Any]:
    """The comment a status change leaves on the incident's issue (ADF)."""
    text = f"Incident {incident.get('id')} was {COMMENTS.get(event, event)} in the incident manager"
    text += f" by {actor}." if actor else "."
    notes = (incident.get("resolution") or {}).get("notes")
    if notes and event != "incident_acknowledged":
        text += f"\n\n{notes}"
    return {"body": adf(text)}


def comment(key: str, incident: Mapping[str, Any], outbound: OutboundSettings, event: str, actor: str) -> Sent:
    """POST /rest/api/3/issue/{key}/comment: the incident's new state on its issue."""

    def go() -> Sent:
        answer = http_client.send("jira", "POST", f"{outbound.jira.base_url}/rest/api/3/issue/{key}/comment",
                                  content=json_body(comment_body(incident, event, actor)), headers=_auth(outbound))
        created = answer.json() or {}
        return Sent("jira", key, answer.status, answer.attempts, {"key": key, "comment_id": created.get("id")})

    return counted("jira", go)


def search_updated(outbound: OutboundSettings, since: str, start_at: int = 0, max_results: int = 100) -> dict[str, Any]:
    """POST /rest/api/3/search: the issues carrying an incident id updated since `since`
    (`yyyy-MM-dd HH:mm`, JIRA's JQL date form), oldest update first, with status and that field."""
    jira = outbound.jira
    field_no = jira.incident_id_field.removeprefix("customfield_")
    jql = f'cf[{field_no}] is not EMPTY AND updated >= "{since}" ORDER BY updated ASC'
    body = {"jql": jql, "startAt": start_at, "maxResults": max_results,
            "fields": ["status", "updated", jira.incident_id_field]}
    answer = http_client.send("jira", "POST", f"{jira.base_url}/rest/api/3/search", content=json_body(body),
                              headers=_auth(outbound))
    return dict(answer.json() or {})

"""Slack: incoming webhook or bot token (`chat.postMessage`, then `chat.update` when the incident is
acknowledged or resolved). Block Kit exactly as the integration guide §6 shows it."""

from __future__ import annotations

from typing import Any, Mapping

from app.adapters import http_client
from app.adapters.channels import Sent, counted, json_body, title_case
from app.adapters.http_client import DeliveryError
from app.config.outbound import OutboundSettings, SlackSettings, route

ACK_ACTION_ID = "acknowledge_incident"
# Slack's `error` values that will not change on a retry (configuration or payload problems)
PERMANENT_ERRORS = {"channel_not_found", "not_in_channel", "invalid_auth", "account_inactive", "token_revoked",
                    "no_permission", "invalid_blocks", "msg_too_long", "is_archived", "message_not_found",
                    "cant_update_message", "missing_scope", "invalid_arguments"}


def header_text(incident: Mapping[str, Any], slack: SlackSettings) -> str:
    # The guide's header starts with a space where an emoji can sit (`severity_emoji`).
    emoji = slack.severity_emoji.get(str(incident.get("severity")), "")
    return f"{emoji} {incident.get('severity')} Incident: {incident.get('title')}"


def blocks(incident: Mapping[str, Any], outbound: OutboundSettings) -> list[dict[str, Any]]:
    """The guide's blocks: header, the four fields, the description, Acknowledge + View Details.
    Once acknowledged or resolved the Acknowledge button is gone (nothing left to acknowledge)."""
    incident_id = str(incident.get("id"))
    actions: list[dict[str, Any]] = []
    if incident.get("status") == "NEW" or incident.get("status") == "ESCALATED":
        actions.append({"type": "button", "text": {"type": "plain_text", "text": "Acknowledge"},
                        "value": incident_id, "action_id": ACK_ACTION_ID})
    actions.append({"type": "button", "text": {"type": "plain_text", "text": "View Details"},
                    "url": outbound.incident_url(incident_id)})
    return [
        {"type": "header", "text": {"type": "plain_text", "text": header_text(incident, outbound.slack)}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*Incident ID:*\n{incident_id}"},
            {"type": "mrkdwn", "text": f"*Status:*\n{incident.get('status')}"},
            {"type": "mrkdwn", "text": f"*Severity:*\n{incident.get('severity')}"},
            {"type": "mrkdwn", "text": f"*Category:*\n{title_case(incident.get('category'))}"},
        ]},
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": f"*Description:*\n{incident.get('description') or '-'}"}},
        {"type": "actions", "elements": actions},
    ]


def mentions(incident: Mapping[str, Any], slack: SlackSettings, event: str) -> tuple[str, ...]:
    if event != "incident_created" or not slack.mention_on_create:
        return ()
    return slack.mention_groups.get(str(incident.get("severity")), ())


def message(incident: Mapping[str, Any], outbound: OutboundSettings, event: str = "incident_created") -> dict[str, Any]:
    """The message body: `blocks` exactly as the guide, and `text` (Slack's notification line and
    fallback) carrying the severity's mention groups on creation."""
    slack = outbound.slack
    groups = mentions(incident, slack, event)
    line = f"{incident.get('severity')} Incident: {incident.get('title')} ({incident.get('id')})"
    text = " ".join((*groups, line))
    body: dict[str, Any] = {"text": text}
    if slack.message_format == "blocks":
        body["blocks"] = blocks(incident, outbound)
    if groups:
        body["link_names"] = True  # plain `@group` names become mentions
    return body


def channel_for(incident: Mapping[str, Any], slack: SlackSettings) -> str:
    """Severity/category routing, first matching rule, else the default channel."""
    return route(slack.routes, slack.default_channel, incident)


def _api(outbound: OutboundSettings, method: str, payload: dict[str, Any]) -> dict[str, Any]:
    slack = outbound.slack
    answer = http_client.send("slack", "POST", f"{slack.api_url.rstrip('/')}/{method}", content=json_body(payload),
                              headers={"Content-Type": "application/json; charset=utf-8",
                                       "Authorization": f"Bearer {slack.bot_token}"})
    body = answer.json() or {}
    if not body.get("ok"):
        error = str(body.get("error") or "unknown_error")
        raise DeliveryError("slack", f"slack {method} failed: {error}", error not in PERMANENT_ERRORS,
                            status=answer.status, attempts=answer.attempts, kind="api_error")
    body["_attempts"] = answer.attempts
    body["_status"] = answer.status
    return body


def post(incident: Mapping[str, Any], outbound: OutboundSettings, event: str = "incident_created") -> Sent:
    """Post the incident: with a bot token to its routed channel (the reference keeps channel + ts
    for `update`), else to the incoming webhook."""
    slack = outbound.slack

    def send() -> Sent:
        body = message(incident, outbound, event)
        if slack.bot_token:
            channel = channel_for(incident, slack)
            answer = _api(outbound, "chat.postMessage", {"channel": channel, **body})
            return Sent("slack", channel, answer["_status"], answer["_attempts"],
                        {"channel": answer.get("channel") or channel, "ts": answer.get("ts")})
        sent = http_client.send("slack", "POST", slack.webhook_url, content=json_body(body),
                                headers={"Content-Type": "application/json"})
        return Sent("slack", "webhook", sent.status, sent.attempts, {})

    return counted("slack", send)


def update(incident: Mapping[str, Any], outbound: OutboundSettings, channel: str, ts: str) -> Sent:
    """Refresh a posted message (status changed; the Acknowledge button goes once acknowledged)."""

    def send() -> Sent:
        answer = _api(outbound, "chat.update", {"channel": channel, "ts": ts,
                                                **message(incident, outbound, "incident_updated")})
        return Sent("slack", channel, answer["_status"], answer["_attempts"], {"channel": channel, "ts": ts})

    return counted("slack", send)

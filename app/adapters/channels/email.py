"""Email over SMTP (smtplib): STARTTLS, implicit TLS or plain; a plain-text and an HTML part. The
same breaker, retry policy and metrics as the HTTP channels; temporary SMTP answers (4xx) and
connection errors are retried, permanent ones (5xx: unknown recipient, refused sender) are not."""

from __future__ import annotations

import html
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, Mapping, Sequence

from app.adapters.channels import Sent, counted, title_case
from app.adapters.http_client import DeliveryError, retry_policy
from app.config.outbound import EmailSettings, OutboundSettings
from app.services import circuit_breakers

FIELDS = (("Incident ID", "id"), ("Status", "status"), ("Severity", "severity"), ("Category", "category"),
          ("Source", "source"), ("Service", "service"))


def _value(incident: Mapping[str, Any], key: str) -> str:
    value = incident.get(key)
    return title_case(value) if key == "category" else str(value if value is not None else "-")


def build(incident: Mapping[str, Any], outbound: OutboundSettings, recipients: Sequence[str],
          event: str = "incident_created", idempotency_key: str | None = None) -> EmailMessage:
    """The message: subject `[P1] INC-…: title`, a text part and an HTML part with the same facts.
    The Message-ID derives from the idempotency key, so a receiver can spot a re-sent step."""
    email = outbound.email
    url = outbound.incident_url(str(incident.get("id")))
    heading = f"{incident.get('severity')} Incident: {incident.get('title')}"
    what = {"incident_created": "opened", "incident_acknowledged": "acknowledged",
            "incident_resolved": "resolved", "escalated": "escalated", "sla_breached": "breached its SLA"}.get(
        event, event.replace("_", " "))
    message = EmailMessage()
    message["Subject"] = f"[{incident.get('severity')}] {incident.get('id')}: {incident.get('title')}"
    message["From"] = email.from_address
    message["To"] = ", ".join(recipients)
    domain = email.from_address.rsplit("@", 1)[-1] or "localhost"
    message["Message-ID"] = (f"<{idempotency_key.replace(':', '.').replace(' ', '_')}@{domain}>" if idempotency_key
                             else make_msgid(domain=domain))
    message["X-Incident-ID"] = str(incident.get("id"))
    lines = [heading, "", f"The incident was {what}.", ""]
    lines += [f"{label}: {_value(incident, key)}" for label, key in FIELDS]
    lines += ["", "Description:", str(incident.get("description") or "-"), "", f"View details: {url}"]
    message.set_content("\n".join(lines) + "\n")
    rows = "".join(f"<tr><th align=\"left\">{html.escape(label)}</th><td>{html.escape(_value(incident, key))}</td></tr>"
                   for label, key in FIELDS)
    message.add_alternative(
        f"<html><body><h2>{html.escape(heading)}</h2><p>The incident was {html.escape(what)}.</p>"
        f"<table>{rows}</table><h3>Description</h3><p>{html.escape(str(incident.get('description') or '-'))}</p>"
        f"<p><a href=\"{html.escape(url, quote=True)}\">View details</a></p></body></html>\n", subtype="html")
    return message


def _context(email: EmailSettings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=email.ca_file or None)


def _deliver(email: EmailSettings, message: EmailMessage, attempt: int) -> None:
    try:
        permit = circuit_breakers.acquire("email")
    except circuit_breakers.CircuitOpen as exc:
        raise DeliveryError("email", str(exc), True, attempts=attempt, retry_after_secs=exc.retry_after_secs,
                            kind="circuit_open") from None
    except circuit_breakers.RateLimited as exc:
        raise DeliveryError("email", str(exc), True, attempts=attempt, retry_after_secs=exc.retry_after_secs,
                            kind="rate_limited") from None
    try:
        if email.security == "tls":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(email.host, email.effective_port, timeout=email.timeout_secs,
                                                  context=_context(email))
        else:
            smtp = smtplib.SMTP(email.host, email.effective_port, timeout=email.timeout_secs)
        with smtp:
            if email.security == "starttls":
                smtp.starttls(context=_context(email))
            if email.username:
                smtp.login(email.username, email.password)
            smtp.send_message(message)
    except smtplib.SMTPResponseException as exc:
        temporary = 400 <= exc.smtp_code < 500
        circuit_breakers.record(permit, not temporary, f"SMTP {exc.smtp_code}")
        reason = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        raise DeliveryError("email", f"email: SMTP {exc.smtp_code} {reason}", temporary, status=exc.smtp_code,
                            attempts=attempt, kind="transport" if temporary else "smtp_rejected") from None
    except smtplib.SMTPRecipientsRefused as exc:
        circuit_breakers.record(permit, True)
        raise DeliveryError("email", f"email: recipients refused: {sorted(exc.recipients)}", False,
                            attempts=attempt, kind="smtp_rejected") from None
    except (OSError, smtplib.SMTPException, socket.timeout) as exc:  # refused, reset, TLS failure, timeout
        circuit_breakers.record(permit, False, f"{type(exc).__name__}: {exc}"[:300])
        raise DeliveryError("email", f"email: {type(exc).__name__}: {exc}", True, attempts=attempt,
                            kind="transport") from None
    circuit_breakers.record(permit, True)


def send(incident: Mapping[str, Any], outbound: OutboundSettings, recipients: Sequence[str] = (),
         event: str = "incident_created", idempotency_key: str | None = None) -> Sent:
    """Send to `recipients` (default: `notifications.email.to`)."""
    email = outbound.email
    to = list(recipients or email.to)
    if not to:
        raise DeliveryError("email", "email: no recipient (the user has no address and notifications.email.to "
                            "is empty)", False, kind="no_recipient")

    def go() -> Sent:
        message = build(incident, outbound, to, event, idempotency_key)
        for attempt in retry_policy(outbound.http.max_attempts, outbound.http):
            with attempt:
                _deliver(email, message, attempt.retry_state.attempt_number)
                return Sent("email", ",".join(to), 250, attempt.retry_state.attempt_number,
                            {"message_id": message["Message-ID"]})
        raise AssertionError("unreachable: tenacity re-raises the last error")

    return counted("email", go)

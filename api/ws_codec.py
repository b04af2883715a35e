"""The WebSocket door's wire format (CONTRACT decision 7): a client message → `WsFrame`. Text
frames are JSON; a batch's `events` is a JSON array, a base64 string of gzip, or the byte-indexed
object `JSON.stringify` makes of pako's Uint8Array; a binary frame is a gzip of a whole message.
Decompression is bounded (no gzip bombs). An edge concern, so it lives with the door, not in app/."""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from app.config import Settings, get_settings
from app.services.payloads import InvalidPayload


@dataclass
class WsFrame:
    """A decoded client frame: `event` (one raw event), `batch` (raw events) or `heartbeat`."""

    type: str
    events: list[Any] = field(default_factory=list)
    batch_id: str | None = None
    timestamp: str | None = None
    nul_free: bool = False  # no `\\u0000` escape in the JSON text: no string of the events holds NUL


def _gunzip(data: bytes, limit: int) -> bytes:
    """gzip (or zlib) → bytes, refusing more than `limit` bytes out (no decompression bombs)."""
    try:
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # auto-detect gzip / zlib header
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise InvalidPayload(f"events: not valid gzip data ({exc})", {"events": ["not valid gzip data"]},
                             code="bad_compression") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise InvalidPayload(f"events: decompressed batch exceeds {limit} bytes", {"events": [f"over {limit} bytes"]},
                             code="message_too_large")
    return out


def _json(data: bytes | str, what: str) -> tuple[Any, bool]:
    """The decoded JSON, and whether its text is free of NUL escapes (one substring search here
    spares the event validator a walk through every string; a raw NUL is not valid JSON)."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidPayload(f"{what} is not valid JSON: {exc}", {"_schema": ["not valid JSON"]},
                             code="malformed_json") from None
    return value, (b"\\u0000" not in data) if isinstance(data, bytes) else ("\\u0000" not in data)


def _byte_indexed(value: Mapping[str, Any]) -> bytes:
    """`JSON.stringify(pako.gzip(...))`: a Uint8Array serialised as {"0": 31, "1": 139, ...}.
    Node's Buffer.toJSON form {"type": "Buffer", "data": [...]} is accepted too."""
    if value.get("type") == "Buffer" and isinstance(value.get("data"), list):
        items = value["data"]
    else:
        try:
            indexed = sorted(((int(k), v) for k, v in value.items()), key=lambda kv: kv[0])
        except ValueError:
            raise InvalidPayload("events: an object must be the byte array of gzip data (numeric keys)",
                                 {"events": ["object keys must be byte indexes 0..n-1"]},
                                 code="bad_compression") from None
        if [k for k, _ in indexed] != list(range(len(indexed))):
            raise InvalidPayload("events: byte indexes must run 0..n-1", {"events": ["byte indexes must run 0..n-1"]},
                                 code="bad_compression")
        items = [v for _, v in indexed]
    if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in items):
        raise InvalidPayload("events: byte values must be integers 0..255", {"events": ["byte values must be 0..255"]},
                             code="bad_compression")
    return bytes(items)


def decode_ws_frame(data: bytes | str, settings: Settings | None = None) -> WsFrame:
    """Decode one client message (CONTRACT decision 7).

    Text frames are JSON messages. A batch's `events` is a JSON array (plain, whatever `compression`
    says), a base64 string of gzip, or the byte-indexed object JSON.stringify makes of pako's
    Uint8Array. A binary frame is a gzip of a whole batch (or event) message.
    """
    settings = settings or get_settings()
    limit = settings.ws_max_message_bytes
    if isinstance(data, (bytes, bytearray)):
        message, nul_free = _json(_gunzip(bytes(data), limit), "the decompressed binary frame")
    else:
        message, nul_free = _json(data, "the message")
    if not isinstance(message, Mapping):
        raise InvalidPayload("a message must be a JSON object with a type", {"_schema": ["expected a JSON object"]},
                             code="invalid_message")
    kind = message.get("type")
    if kind == "heartbeat":
        return WsFrame("heartbeat", timestamp=str(message.get("timestamp") or "") or None)
    if kind == "event":
        return WsFrame("event", [dict(message)], nul_free=nul_free)
    if kind != "batch":
        raise InvalidPayload(f"unknown message type {kind!r}; expected event, batch or heartbeat",
                             {"type": ["expected event, batch or heartbeat"]}, code="unknown_type")
    events = message.get("events")
    if isinstance(events, str):
        try:
            compressed = base64.b64decode(events, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidPayload("events: a string must be base64 of gzip data", {"events": ["not valid base64"]},
                                 code="bad_compression") from None
        events, nul_free = _json(_gunzip(compressed, limit), "the decompressed events")
    elif isinstance(events, Mapping):
        events, nul_free = _json(_gunzip(_byte_indexed(events), limit), "the decompressed events")
    if not isinstance(events, list) or not events:
        raise InvalidPayload("events must be a non-empty array (or its gzip)",
                             {"events": ["expected a non-empty array"]},
                             code="invalid_batch")
    if len(events) > settings.max_batch_events:
        raise InvalidPayload(f"a batch holds at most {settings.max_batch_events} events, got {len(events)}",
                             {"events": [f"at most {settings.max_batch_events} events"]}, code="batch_too_large")
    count = message.get("count")
    if count is not None and count != len(events):
        raise InvalidPayload(f"count says {count} but the batch holds {len(events)} events",
                             {"count": [f"expected {len(events)}"]}, code="count_mismatch")
    batch_id = message.get("batch_id")
    return WsFrame("batch", list(events), batch_id=str(batch_id) if batch_id is not None else None,
                   nul_free=nul_free)

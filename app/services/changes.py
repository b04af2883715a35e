"""Committed incident changes, published on Redis for subscribers (gRPC StreamIncidents).
Publish only after commit; subscribers filter by kind/severity."""

from __future__ import annotations

import json
import logging
from typing import Any, Iterator, Mapping, Sequence

import orjson

from app.adapters.redis_client import get_redis

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "im:incident-changes"


def channel() -> str:
    """The change channel of this deployment. Redis pub/sub ignores database numbers, so the
    database number is part of the name: deployments (and test sessions) sharing a Redis server on
    different databases never hear each other."""
    client = get_redis()
    db = client.connection_pool.connection_kwargs.get("db", 0) if client is not None else 0
    return f"{CHANNEL_PREFIX}:{db}"

# kinds: incident_created, incident_updated, incident_acknowledged, incident_resolved, incident_closed,
# incident_merged, event_received


def encode(kind: str, incident: Mapping[str, Any], changes: Sequence[Mapping[str, Any]] = ()) -> str:
    """The message every publisher sends (values that are not JSON, like datetimes, as str())."""
    return orjson.dumps({"kind": kind, "incident": dict(incident), "changes": list(changes)}, default=str,
                        option=orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS).decode()


def publish(kind: str, incident: Mapping[str, Any], changes: Sequence[Mapping[str, Any]] = ()) -> None:
    client = get_redis()
    if client is None:
        return
    message = encode(kind, incident, changes)
    try:
        client.publish(channel(), message)
    except Exception:  # subscribers are best-effort; the database already holds the change
        log.warning("could not publish incident change", exc_info=True, extra={"kind": kind})


# PUBLISH KEYS[1] each ARGV in order
_PUBLISH_MANY = """
for i = 1, #ARGV do
  redis.call('PUBLISH', KEYS[1], ARGV[i])
end
return #ARGV
"""


def publish_many(kind: str, incidents: Sequence[Mapping[str, Any]]) -> None:
    """One round trip for a batch (ingest publishes every incident a batch opened)."""
    client = get_redis()
    if client is None or not incidents:
        return
    # One command for the batch: a pipeline of 1,000 PUBLISHes cost the pipeline's route stage
    # ~90 ms of client CPU, most of it reading 1,000 replies (issue 11 profile).
    try:
        client.eval(_PUBLISH_MANY, 1, channel(), *[encode(kind, incident) for incident in incidents])
    except Exception:
        log.warning("could not publish incident changes", exc_info=True, extra={"kind": kind})


def subscribe_batches(timeout: float = 1.0, max_batch: int = 500) -> Iterator[list[dict[str, Any]]]:
    """Like `subscribe`, but yields every message already waiting at once (up to `max_batch`), so
    a reader can load what the batch needs in one query; an empty list every `timeout` seconds of
    silence."""
    client = get_redis()
    if client is None:
        raise RuntimeError("change subscriptions need REDIS_URL")
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel())
    try:
        while True:
            message = pubsub.get_message(timeout=timeout)
            batch: list[dict[str, Any]] = []
            while message is not None:
                try:
                    batch.append(json.loads(message["data"]))
                except (ValueError, TypeError):
                    pass
                if len(batch) >= max_batch:
                    break
                message = pubsub.get_message(timeout=0)
            yield batch
    finally:
        pubsub.close()


def subscribe(timeout: float = 1.0) -> Iterator[dict[str, Any] | None]:
    """Yield change messages one by one as they arrive; yields None every `timeout` seconds of
    silence so the caller can check whether its client went away."""
    for batch in subscribe_batches(timeout):
        if not batch:
            yield None
        yield from batch

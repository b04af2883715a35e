"""config.yaml section `graphql`: the GraphQL door's limits (docs/graphql.md). The dataclass is the
one declaration of the keys; the schema that validates the section is generated from it.
`GRAPHQL_INTROSPECTION` (true/false) overrides `graphql.introspection` from the environment."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from marshmallow import Schema, validate

from app.config.schema import Bool, load, section_schema


@dataclass(frozen=True)
class GraphQLSettings:
    # Tools (GraphiQL, code generators) need introspection; a deployment may turn it off.
    introspection: bool = True
    # Nesting of selections below the operation (the guide's governance query is 5 deep).
    max_depth: int = field(default=10, metadata={"validate": validate.Range(min=2, max=100)})
    # Aliased fields per operation (aliases multiply work without deepening the query).
    max_aliases: int = field(default=20, metadata={"validate": validate.Range(min=0, max=1000)})
    # Estimated cost: one per field, lists multiplied by their page size (docs/graphql.md, "Limits").
    max_cost: int = field(default=50_000, metadata={"validate": validate.Range(min=10)})
    # A JSON array of operations in one POST; refused unless enabled, then at most max_batch.
    batching: bool = False
    max_batch: int = field(default=10, metadata={"validate": validate.Range(min=1, max=100)})
    # Subscriptions one graphql-transport-ws connection may hold at once.
    max_subscriptions_per_connection: int = field(default=50, metadata={"validate": validate.Range(min=1)})
    # Seconds a new WebSocket has to send connection_init (then closed with 4408).
    connection_init_timeout_secs: int = field(default=10, metadata={"validate": validate.Range(min=1, max=600)})


SECTION: Schema = section_schema(GraphQLSettings)
_ENV = Schema.from_dict({"GRAPHQL_INTROSPECTION": Bool()})()


def load_graphql(tree: Mapping[str, Any], env: Mapping[str, str]) -> GraphQLSettings:
    settings: GraphQLSettings = load(SECTION, tree.get("graphql") or {}, "graphql")
    given = load(_ENV, {k: env[k] for k in ("GRAPHQL_INTROSPECTION",) if k in env})
    if "GRAPHQL_INTROSPECTION" in given:
        settings = replace(settings, introspection=given["GRAPHQL_INTROSPECTION"])
    return settings

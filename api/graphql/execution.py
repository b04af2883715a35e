"""Prepare and run one GraphQL operation: parse, validate (the spec's rules, introspection when it
is off, then the depth/alias/cost limits), check the credential's permission for the operation
type, execute. HTTP (api/graphql/http.py) and WebSocket (api/graphql/ws.py) both come here."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping

from graphql import (
    ExecutionResult,
    GraphQLError,
    execute,
    get_operation_ast,
    parse,
    specified_rules,
    validate,
)
from graphql.language import ast
from graphql.validation import NoSchemaIntrospectionCustomRule
from prometheus_client import Counter, Histogram

from api.graphql import limits
from api.graphql.loaders import GraphQLContext
from api.graphql.schema import schema
from app.config.graphql import GraphQLSettings

log = logging.getLogger(__name__)

GRAPHQL_OPERATIONS = Counter("incident_manager_graphql_operations_total", "GraphQL operations by type and outcome",
                             ["type", "outcome"])
GRAPHQL_DURATION = Histogram("incident_manager_graphql_duration_seconds", "GraphQL operation time", ["type"])

# The permission an operation type needs (the REST permissions, docs/foundation.md).
PERMISSIONS = {"query": "incident:read", "subscription": "incident:read", "mutation": "incident:write"}


@dataclass(frozen=True)
class Prepared:
    document: ast.DocumentNode
    operation: ast.OperationDefinitionNode
    variables: Mapping[str, Any]
    operation_name: str | None

    @property
    def kind(self) -> str:
        return self.operation.operation.value  # "query" | "mutation" | "subscription"

    @property
    def permission(self) -> str:
        return PERMISSIONS[self.kind]


class Rejected(Exception):
    """The operation cannot run; `errors` say why (answered as `{"errors": [...]}` without data)."""

    def __init__(self, errors: list[GraphQLError], code: str = "invalid") -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors
        self.code = code


@functools.lru_cache(maxsize=512)
def _checked(query: str, introspection: bool) -> tuple[ast.DocumentNode | None, tuple[GraphQLError, ...], str]:
    """Parse and validate a document once: dashboards send the same few documents again and again
    (parsing and validating the governance query is ~20 ms of its answer). Validation does not
    depend on variables or the caller; the limits, which do, are checked per request."""
    try:
        document = parse(query)
    except GraphQLError as exc:
        return None, (exc,), "syntax_error"
    rules = list(specified_rules) + ([] if introspection else [NoSchemaIntrospectionCustomRule])
    errors = tuple(validate(schema.graphql_schema, document, rules, max_errors=20))
    code = "introspection_disabled" if any("introspection" in e.message for e in errors) else "validation_failed"
    return document, errors, code


def prepare(payload: Any, settings: GraphQLSettings) -> Prepared:
    """Check one request `{query, variables, operationName}`; raises Rejected with the errors."""
    if not isinstance(payload, Mapping):
        raise Rejected([GraphQLError("the request must be a JSON object with a `query` string")], "bad_request")
    query = payload.get("query")
    variables = payload.get("variables") or {}
    name = payload.get("operationName") or None
    if not isinstance(query, str) or not query.strip():
        raise Rejected([GraphQLError("`query` is required and must be a string holding a GraphQL document")],
                       "bad_request")
    if not isinstance(variables, Mapping):
        raise Rejected([GraphQLError("`variables` must be a JSON object")], "bad_request")
    if name is not None and not isinstance(name, str):
        raise Rejected([GraphQLError("`operationName` must be a string")], "bad_request")
    document, errors, code = _checked(query, settings.introspection)
    if errors:
        raise Rejected(list(errors), code)
    assert document is not None  # a document that did not parse has errors
    operation = get_operation_ast(document, name)
    if operation is None:
        message = (f"no operation named {name!r} in the document" if name else
                   "the document holds several operations: name one in `operationName`")
        raise Rejected([GraphQLError(message)], "validation_failed")
    refused = limits.check(document, operation, variables, settings)
    if refused:
        raise Rejected(refused, str((refused[0].extensions or {}).get("code", "limit")))
    return Prepared(document, operation, dict(variables), name)


def run(prepared: Prepared, context: GraphQLContext, root: Any = None) -> ExecutionResult:
    """Execute a prepared operation (a subscription's operation runs once per event, with the event
    as `root`)."""
    started = time.perf_counter()
    result = execute(schema.graphql_schema, prepared.document, root_value=root, context_value=context,
                     variable_values=dict(prepared.variables), operation_name=prepared.operation_name)
    if not isinstance(result, ExecutionResult):  # an awaitable: no resolver here is async
        raise RuntimeError("asynchronous resolver in a synchronous schema")
    elapsed = time.perf_counter() - started
    GRAPHQL_DURATION.labels(prepared.kind).observe(elapsed)
    GRAPHQL_OPERATIONS.labels(prepared.kind, "error" if result.errors else "ok").inc()
    for error in result.errors or []:
        if error.original_error is not None and not isinstance(error.original_error, GraphQLError):
            log.error("graphql resolver failed", exc_info=error.original_error,
                      extra={"operation": prepared.operation_name, "path": error.path})
    return result


def formatted(result: ExecutionResult) -> dict[str, Any]:
    """The response body; an unexpected resolver failure shows as `internal error`, not its text."""
    body: dict[str, Any] = {"data": result.data}
    if result.errors:
        body["errors"] = [_public(e) for e in result.errors]
    return body


def _public(error: GraphQLError) -> dict[str, Any]:
    out = error.formatted
    original = error.original_error
    if original is not None and not isinstance(original, GraphQLError):
        out = {**out, "message": "internal error; the request id is in the X-Request-ID header",
               "extensions": {"code": "internal_error"}}
    return dict(out)


def errors_body(errors: list[GraphQLError], code: str) -> dict[str, Any]:
    """A refused operation: `errors` only, no `data` (CONTRACT decision 12)."""
    out = []
    for error in errors:
        item = dict(error.formatted)
        item["extensions"] = {"code": code, **(error.extensions or {})}
        out.append(item)
    return {"errors": out}

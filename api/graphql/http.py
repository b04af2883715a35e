"""`POST /graphql` (and `GET /graphql?query=...` for queries) and the GraphiQL playground.

Every operation needs a credential (the REST ones: `X-API-Key`, or `Authorization: Bearer` with
an API key or JWT): none or an unknown one answers 401 before anything is parsed. Queries need
`incident:read`, mutations `incident:write` (403 otherwise), and each request counts against the
credential's rate limit (429). A refused document (syntax, validation, a limit, introspection
when it is off) answers 200 with `errors` and no `data` (CONTRACT decision 12); a malformed
request 400. A JSON array of operations is refused unless `graphql.batching` is on."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import orjson
from flask import Response, jsonify, request, send_from_directory

from api.auth import current_principal, enforce, throttle
from api.errors import ApiError
from api.graphql.execution import Prepared, Rejected, errors_body, formatted, prepare, run
from api.graphql.loaders import GraphQLContext
from app.config import get_settings
from app.services.auth import Principal

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


def _one(payload: Any, principal: Principal, method: str) -> dict[str, Any]:
    settings = get_settings().graphql
    try:
        prepared: Prepared = prepare(payload, settings)
    except Rejected as exc:
        throttle(principal)  # a refused document still counts against the rate
        log.info("graphql operation refused", extra={"code": exc.code, "principal": principal.name,
                                                     "reason": str(exc)[:300]})
        return errors_body(exc.errors, exc.code)
    if method == "GET" and prepared.kind != "query":
        raise ApiError(405, "method_not_allowed", f"a {prepared.kind} must be sent with POST",
                       headers={"Allow": "POST"})
    if prepared.kind == "subscription":
        throttle(principal)
        raise SubscriptionOverHttp()
    enforce(principal, prepared.permission)
    return formatted(run(prepared, GraphQLContext(principal)))


def _execute(payload: Any, principal: Principal, method: str) -> dict[str, Any]:
    from graphql import GraphQLError

    try:
        return _one(payload, principal, method)
    except SubscriptionOverHttp:
        return errors_body([GraphQLError("subscriptions run over WebSocket (graphql-transport-ws) at /graphql/ws "
                                         "or /graphql")], "subscription_over_http")


class SubscriptionOverHttp(Exception):
    pass


def _payload_from_query_string() -> dict[str, Any]:
    variables = request.args.get("variables")
    try:
        parsed = json.loads(variables) if variables else None
    except ValueError:
        raise ApiError(400, "bad_request", "`variables` must be JSON", {"variables": ["not JSON"]}) from None
    return {"query": request.args.get("query"), "variables": parsed, "operationName": request.args.get("operationName")}


def graphql_http() -> Any:
    """Queries need `incident:read`, mutations `incident:write`. GET runs queries only."""
    principal = current_principal()
    settings = get_settings().graphql
    if request.method == "GET":
        if "query" not in request.args:
            raise ApiError(400, "bad_request", "send a query: GET /graphql?query=... or POST a JSON body; "
                                               "the playground is at /graphql/playground", {"query": ["required"]})
        return jsonify(_execute(_payload_from_query_string(), principal, "GET"))
    if (request.mimetype or "") != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       f"expected Content-Type: application/json, got {request.mimetype or 'none'}")
    try:
        body = orjson.loads(request.get_data(cache=True) or b"null")
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the request body is not valid JSON: {exc}") from None
    if isinstance(body, list):
        if not settings.batching:
            raise ApiError(400, "batching_disabled",
                           "batched operations (a JSON array) are off; send one operation per request "
                           "(graphql.batching enables them)", {"batch": ["not allowed"]})
        if not 1 <= len(body) <= settings.max_batch:
            raise ApiError(400, "bad_request", f"a batch holds 1..{settings.max_batch} operations",
                           {"batch": [f"at most {settings.max_batch}"]})
        return Response(orjson.dumps([_execute(item, principal, "POST") for item in body], default=str),
                        mimetype="application/json")
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object {query, variables, operationName}",
                       {"_schema": ["expected a JSON object"]})
    return Response(orjson.dumps(_execute(body, principal, "POST"), default=str), mimetype="application/json")


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Incident Manager GraphQL playground</title>
<link rel="stylesheet" href="{static}/graphiql.min.css">
<style>html, body, #graphiql {{ height: 100%; margin: 0; }}</style>
</head>
<body>
<div id="graphiql">Loading the playground...</div>
<script src="{static}/react.production.min.js"></script>
<script src="{static}/react-dom.production.min.js"></script>
<script src="{static}/graphiql.min.js"></script>
{boot}
</body>
</html>
"""


def _config_script(data: dict[str, Any]) -> str:
    # JSON in a non-executed script element: `<` escaped so no value can end the element.
    text = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script id="config" type="application/json">{text}</script>'


_BOOT = """<script>
  (function () {
    const config = JSON.parse(document.getElementById("config").textContent);
    const fetcher = GraphiQL.createFetcher({ url: config.url });
    const root = ReactDOM.createRoot(document.getElementById("graphiql"));
    root.render(React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: config.query,
      headers: JSON.stringify(config.headers, null, 2),
      shouldPersistHeaders: false,
      defaultEditorToolsVisibility: "headers",
    }));
  })();
</script>"""

DEFAULT_QUERY = """# Incidents, newest first. Run with the play button (or Ctrl-Enter).
{
  incidents(first: 10) {
    totalCount
    edges { node { id title severity status createdAt } }
  }
}
"""


def _credential_header() -> dict[str, str]:
    """The caller's credential, for the playground's headers editor (a browser opening the page
    passes it as `?token=`)."""
    key = request.headers.get("X-API-Key")
    if key:
        return {"X-API-Key": key}
    authorization = request.headers.get("Authorization", "")
    if authorization:
        return {"Authorization": authorization}
    return {"Authorization": f"Bearer {request.args.get('token', '').strip()}"}


def playground() -> Any:
    """The page itself needs a credential, like every operation it sends."""
    token = (request.args.get("token") or "").strip()
    if token and not request.headers.get("X-API-Key") and not request.headers.get("Authorization"):
        from app.services.auth import authenticate_bearer

        throttle(authenticate_bearer(token))
    else:
        throttle(current_principal())
    static = "/graphql/playground/static"
    boot = _config_script({"url": "/graphql", "headers": _credential_header(),
                           "query": request.args.get("query") or DEFAULT_QUERY}) + _BOOT
    page = _PAGE.format(static=html.escape(static), boot=boot)
    response = Response(page, mimetype="text/html")
    # the page holds the caller's credential: never cached, never sent on as a referrer
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def playground_static(name: str) -> Any:
    """Public library code, as shipped in the package; no data."""
    response = send_from_directory(STATIC, name, max_age=86_400)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response

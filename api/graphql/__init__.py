"""The GraphQL door (docs/graphql.md): `POST|GET /graphql`, WebSocket subscriptions
(graphql-transport-ws) at `/graphql/ws` and `/graphql`, and the GraphiQL playground.

graphene and the schema load on the first GraphQL request, not in `create_app` (about 0.8 s that
every process building the app, the CLI included, would otherwise pay); a gunicorn worker loads
them after boot (api/gunicorn_conf.py), so no request waits for them there."""

from __future__ import annotations

from typing import Any

from flask import Flask

from api.openapi import doc


def load() -> None:
    """Import the schema and the views (idempotent)."""
    from api.graphql import http, ws  # noqa: F401


@doc("GraphQL queries and mutations (docs/graphql.md)", permission="any",
     responses={200: "{data, errors}: a refused document has errors and no data", 400: "", 405: "", 415: ""})
def graphql_http() -> Any:
    """Queries need `incident:read`, mutations `incident:write`. GET runs queries only."""
    from api.graphql import http

    return http.graphql_http()


@doc("GraphQL subscriptions over WebSocket (graphql-transport-ws; the credential goes in connection_init's "
     "payload)", permission="incident:read")
def graphql_socket() -> Any:
    from api.graphql import ws

    return ws.graphql_socket()


@doc("GraphiQL, served from this service (no CDN)", permission="any",
     responses={200: "An HTML page; the credential (header or ?token=) fills its headers editor"})
def playground() -> Any:
    """The page itself needs a credential, like every operation it sends."""
    from api.graphql import http

    return http.playground()


@doc("The playground's own files (GraphiQL, React; MIT, LICENSES.txt)", responses={200: "", 404: ""})
def playground_static(name: str) -> Any:
    """Public library code, as shipped in the package; no data."""
    from api.graphql import http

    return http.playground_static(name)


def register(app: Flask) -> None:
    """Mount the HTTP routes, the WebSocket routes and the playground (create_app calls this)."""
    app.add_url_rule("/graphql", "graphql_http", graphql_http, methods=["GET", "POST"])
    app.add_url_rule("/graphql/playground", "graphql_playground", playground, methods=["GET"])
    app.add_url_rule("/graphql/playground/static/<path:name>", "graphql_playground_static", playground_static,
                     methods=["GET"])
    app.add_url_rule("/graphql/ws", "graphql_ws", graphql_socket, websocket=True)
    app.add_url_rule("/graphql", "graphql_ws_root", graphql_socket, websocket=True)

"""The GraphQL door (docs/graphql.md): `POST|GET /graphql`, WebSocket subscriptions
(graphql-transport-ws) at `/graphql/ws` and `/graphql`, and the GraphiQL playground."""

from __future__ import annotations

from flask import Flask

from api.openapi import doc


def register(app: Flask) -> None:
    """Mount the HTTP routes, the WebSocket routes and the playground (create_app calls this)."""
    from api.graphql import http, ws

    http.register(app)
    socket = doc("GraphQL subscriptions over WebSocket (graphql-transport-ws; the credential goes in "
                 "connection_init's payload)", permission="incident:read")(ws.graphql_socket)
    app.add_url_rule("/graphql/ws", "graphql_ws", socket, websocket=True)
    app.add_url_rule("/graphql", "graphql_ws_root", socket, websocket=True)

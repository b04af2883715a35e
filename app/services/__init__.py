"""Use cases. Every door (REST, gRPC, WebSocket, GraphQL, tasks) calls these."""

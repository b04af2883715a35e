"""Use cases. Every door (REST, gRPC, WebSocket, tasks) calls these."""

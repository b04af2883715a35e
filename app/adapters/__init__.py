"""Adapters to the outside: Postgres/SQLite (SQLAlchemy), Redis, outbound HTTP."""

"""Alembic migrations (run with `incident-manager db upgrade`, the Procfile's `release`)."""

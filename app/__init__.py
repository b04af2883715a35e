"""LLM incident manager: the domain and its services (no Flask, no Celery, no HTTP in here)."""

"""Celery tasks: thin calls into app.services. One module per queue."""

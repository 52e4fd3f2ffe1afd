"""The background side: Celery tasks, the embedded local worker, the runner that claims and runs a job, the reconciler."""

"""The Python peers of the bench (sqs-workers, dramatiq-sqs, Celery on kombu's SQS transport): one module
each, run by the interpreter of their own virtualenv (``.venv-peers``, ``make bench-peers``)."""

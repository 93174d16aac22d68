"""celery-kafka-bridge: Kafka records in, Celery tasks out, commits behind finished work."""

__version__ = "0.1.0"

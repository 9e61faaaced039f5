"""The management API (RabbitMQ's paths, JSON and status codes on the management port)."""

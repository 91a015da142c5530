"""The HTTP API: a Flask app (factory in `app`) with blueprints for adapters, OpenAI-compatible
generation and users; pydantic schemas and the OpenAPI document; API-key tenancy; the batching
engine that shares decode steps between requests; Prometheus metrics; and `server` (gunicorn)."""

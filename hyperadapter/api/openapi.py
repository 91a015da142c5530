"""The OpenAPI 3.1 document, built from the pydantic schemas and the route table below."""

from __future__ import annotations

from pydantic import BaseModel

from hyperadapter import __version__
from hyperadapter.api import schemas as s

# (method, path, summary, request model, response model, success status, auth)
ROUTES = [
    ("post", "/v1/adapters", "Create an adapter from a context, or reuse a cached one", s.AdapterCreate, s.AdapterInfo, "201", True),
    ("get", "/v1/adapters", "List the tenant's adapters (paged)", None, s.AdapterList, "200", True),
    ("get", "/v1/adapters/{id}", "An adapter's metadata", None, s.AdapterInfo, "200", True),
    ("get", "/v1/adapters/{id}/peft", "The adapter as a zipped PEFT folder", None, None, "200", True),
    ("delete", "/v1/adapters/{id}", "Delete an adapter", None, None, "200", True),
    ("post", "/v1/chat/completions", "OpenAI-compatible chat completion", s.ChatCompletionRequest, s.ChatCompletion, "200", True),
    ("post", "/v1/completions", "OpenAI-compatible text completion", s.CompletionRequest, s.Completion, "200", True),
    ("post", "/v1/users/{name}/messages", "Append a user's messages; their personal adapter is updated", s.UserMessages, s.UserInfo, "200", True),
    ("get", "/v1/users/{name}", "A user's personal adapter and counts", None, s.UserInfo, "200", True),
    ("delete", "/v1/users/{name}", "Forget a user: memories, adapters, index keys", None, None, "200", True),
    ("get", "/healthz", "Liveness and basic state", None, s.Health, "200", False),
    ("get", "/metrics", "Prometheus metrics (text format)", None, None, "200", False),
    ("get", "/openapi.json", "This document", None, None, "200", False),
]
ERRORS = {"400": "malformed request", "401": "missing or invalid API key", "404": "not found (or another tenant's)",
          "413": "request or context too large", "422": "invalid field values", "429": "queue full, retry later"}


def _schema(model: type[BaseModel], components: dict) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def document() -> dict:
    components: dict = {}
    error_ref = _schema(s.Error, components)
    paths: dict = {}
    for method, path, summary, request, response, status, auth in ROUTES:
        op: dict = {"summary": summary, "responses": {}}
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
        if request is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _schema(request, components)}}}
        ok: dict = {"description": "success"}
        if response is not None:
            ok["content"] = {"application/json": {"schema": _schema(response, components)}}
        op["responses"][status] = ok
        if status == "201":
            op["responses"]["200"] = {"description": "reused from the cache", **({"content": ok["content"]} if "content" in ok else {})}
        for code, text in ERRORS.items():
            if code == "401" and not auth:
                continue
            op["responses"][code] = {"description": text, "content": {"application/json": {"schema": error_ref}}}
        if auth:
            op["security"] = [{"bearer": []}]
        paths.setdefault(path, {})[method] = op
    return {"openapi": "3.1.0",
            "info": {"title": "hyperadapter", "version": __version__,
                     "description": "Context in, LoRA adapter out; OpenAI-compatible generation with them."},
            "paths": paths,
            "components": {"schemas": components,
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}

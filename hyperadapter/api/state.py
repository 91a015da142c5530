"""What the routes share: the services, the engine, the users, the metrics, and the tenant checks."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from flask import current_app, g, request

from hyperadapter.api.engine import Engine
from hyperadapter.api.errors import APIError, bad_request, not_found
from hyperadapter.api.metrics import Metrics
from hyperadapter.api.users import Users
from hyperadapter.config import Settings


@dataclass
class State:
    settings: Settings
    services: object  # hyperadapter.service.Services
    engine: Engine
    users: Users
    metrics: Metrics
    keys: dict[str, str]  # API key -> tenant; empty: no auth, single tenant "default"


def state() -> State:
    return current_app.extensions["hyperadapter"]


def authenticate() -> str:
    """The tenant of this request (401 without a valid key when keys are configured)."""
    keys = state().keys
    if not keys:
        return "default"
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("X-API-Key", "")
    for key, tenant in keys.items():
        if token and hmac.compare_digest(token, key):
            return tenant
    raise APIError(401, "authentication_error", "missing or invalid API key (Authorization: Bearer <key>)")


def tenant() -> str:
    return g.tenant


def visible(record) -> bool:
    t = tenant()
    return record is not None and (record.owner == t or record.owner.startswith(t + "/"))


def user_of(record) -> str | None:
    _, sep, user = record.owner.partition("/user/")
    return user if sep else None


def json_body() -> dict:
    body = request.get_json(silent=True)
    if body is None:
        raise bad_request("the body must be valid JSON (Content-Type: application/json)")
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


def get_visible_record(adapter_id: str):
    record = state().services.store.get(adapter_id)
    if not visible(record):
        raise not_found(f"no adapter {adapter_id!r}")
    return record

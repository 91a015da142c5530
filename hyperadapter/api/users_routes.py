"""/v1/users/<name>: append a user's messages (their personal adapter follows), read, forget."""

from __future__ import annotations

import re

from flask import Blueprint, jsonify

from hyperadapter.api.errors import not_found, unprocessable
from hyperadapter.api.schemas import NAME_PATTERN, UserInfo, UserMessages
from hyperadapter.api.state import json_body, state, tenant

bp = Blueprint("users", __name__)


def _check(name: str) -> None:
    if not re.match(NAME_PATTERN, name):
        raise unprocessable("user names are 1-64 letters, digits, '_', '.', '@' or '-'")


@bp.post("/v1/users/<name>/messages")
def append(name: str):
    _check(name)
    body = UserMessages.model_validate(json_body())
    s = state()
    if s.services.generator is None:
        raise unprocessable("this server has no generator; personal adapters are unavailable")
    total = sum(len(m.content) for m in body.messages)
    if total > s.settings.max_context_chars:
        from hyperadapter.api.errors import too_large
        raise too_large(f"messages hold {total} characters; the limit is {s.settings.max_context_chars}")
    info = s.users.append(tenant(), name, [m.model_dump() for m in body.messages])
    s.metrics.generated.inc()
    return _reply(info)


def _reply(info: dict):
    """A user's meta as the API shows it (meta written before routes were kept has none: 0)."""
    return jsonify(UserInfo(**{k: info[k] for k in ("user", "adapter_id", "messages", "tokens")},
                            routes=info.get("routes", 0)).model_dump())


@bp.get("/v1/users/<name>")
def read(name: str):
    _check(name)
    info = state().users.info(tenant(), name)
    if info is None:
        raise not_found(f"no user {name!r}")
    return _reply(info)


@bp.delete("/v1/users/<name>")
def forget(name: str):
    _check(name)
    if not state().users.forget(tenant(), name):
        raise not_found(f"no user {name!r}")
    return jsonify({"user": name, "deleted": True})

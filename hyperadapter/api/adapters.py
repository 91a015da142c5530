"""/v1/adapters: create (or reuse through the cache), read, list, download as PEFT zip, delete."""

from __future__ import annotations

import io
import json
import time
import zipfile

from flask import Blueprint, jsonify, request, send_file

from hyperadapter.adapter import Routes
from hyperadapter.api.errors import too_large, unprocessable
from hyperadapter.api.schemas import AdapterCreate, AdapterInfo, AdapterList
from hyperadapter.api.state import get_visible_record, json_body, state, tenant, user_of
from hyperadapter.api.users import user_owner

bp = Blueprint("adapters", __name__)


def _target_modules(record) -> list[str]:
    try:
        return sorted(json.loads((record.path / "adapter_config.json").read_text())["target_modules"])
    except (OSError, KeyError, ValueError):
        return []


def adapter_info(record, result=None) -> AdapterInfo:
    return AdapterInfo(id=record.id, kind=record.kind, rank=record.rank,
                       target_modules=_target_modules(record),
                       base_model=record.base_model, user=user_of(record), created=record.created,
                       last_used=record.last_used, hits=record.hits, bytes=record.nbytes,
                       routes=Routes.count(record.path),
                       cache_hit=None if result is None else result.cache_hit,
                       similarity=None if result is None else result.similarity,
                       neighbour=None if result is None else result.neighbour,
                       how=None if result is None else result.how)


def create_adapter(kind: str, context: str, owner: str, reuse: bool = True):
    """Create or reuse an adapter; records the cache outcome in the metrics."""
    s = state()
    if len(context) > s.settings.max_context_chars:
        raise too_large(f"context has {len(context)} characters; the limit is {s.settings.max_context_chars}")
    if s.services.generator is None:
        raise unprocessable("this server has no generator; only stored adapters can be used")
    start = time.perf_counter()
    result = s.services.adapter_for(kind, context, owner=owner, reuse=reuse)
    s.metrics.cache.labels(result.how).inc()
    if result.how == "generated":
        s.metrics.generated.inc()
        s.metrics.generate_seconds.observe(time.perf_counter() - start)
    return result


@bp.post("/v1/adapters")
def create():
    body = AdapterCreate.model_validate(json_body())
    owner = user_owner(tenant(), body.user) if body.user else tenant()
    result = create_adapter(body.kind, body.context, owner, body.reuse)
    info = adapter_info(result.record, result)
    return jsonify(info.model_dump()), 200 if result.cache_hit else 201


@bp.get("/v1/adapters")
def listing():
    try:
        limit = int(request.args.get("limit", 50))
        offset = int(request.args.get("offset", 0))
    except ValueError:
        raise unprocessable("limit and offset must be integers") from None
    if not 1 <= limit <= 500 or offset < 0:
        raise unprocessable("limit must be 1..500 and offset >= 0")
    kind = request.args.get("kind")
    user = request.args.get("user")
    owner = user_owner(tenant(), user) if user else tenant()
    store = state().services.store
    records = store.list(owner=owner, kind=kind, limit=limit, offset=offset)
    total = store.count(owner=owner, kind=kind)
    return jsonify(AdapterList(data=[adapter_info(r) for r in records], total=total, offset=offset,
                               limit=limit).model_dump())


@bp.get("/v1/adapters/<adapter_id>")
def read(adapter_id: str):
    return jsonify(adapter_info(get_visible_record(adapter_id)).model_dump())


@bp.get("/v1/adapters/<adapter_id>/peft")
def peft_zip(adapter_id: str):
    record = get_visible_record(adapter_id)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(record.path.iterdir()):
            z.write(path, arcname=path.name)
    buffer.seek(0)
    return send_file(buffer, mimetype="application/zip", as_attachment=True, download_name=f"{adapter_id}.zip")


@bp.delete("/v1/adapters/<adapter_id>")
def delete(adapter_id: str):
    get_visible_record(adapter_id)
    state().services.store.delete(adapter_id)
    return jsonify({"id": adapter_id, "deleted": True})

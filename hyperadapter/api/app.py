"""The Flask app factory: blueprints, auth, limits, errors, metrics, and the ops routes."""

from __future__ import annotations

import json
import logging
import threading
import time

from flask import Flask, Response, g, jsonify, request

from hyperadapter.api import adapters, errors, generation, openapi, users_routes
from hyperadapter.api.engine import Engine
from hyperadapter.api.metrics import Metrics
from hyperadapter.api.state import State, authenticate, state
from hyperadapter.api.users import Users
from hyperadapter.config import Settings

log = logging.getLogger("hyperadapter.api")
PUBLIC = {"/healthz", "/metrics", "/openapi.json"}


def create_app(settings: Settings, services=None) -> Flask:
    """Build the app (loading the base model, generator and store once, unless `services` is given)."""
    if services is None:
        from hyperadapter.service import Services
        services = Services.create(settings, load_generator=bool(settings.generator))
    metrics = Metrics()
    engine = Engine(services.runtime, max_batch=settings.max_batch_size, max_queue=settings.max_queue, metrics=metrics)
    users = Users(settings.store_dir / "users", services.generator, services.store, threading.Lock(),
                  max_routes=settings.conversation_max_routes, route_rank=settings.conversation_route_rank or None)
    app = Flask("hyperadapter")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    app.extensions["hyperadapter"] = State(settings, services, engine, users, metrics, settings.api_key_tenants())
    errors.install(app)
    for bp in (adapters.bp, generation.bp, users_routes.bp):
        app.register_blueprint(bp)

    @app.before_request
    def before():
        g.start = time.perf_counter()
        if request.path not in PUBLIC:
            g.tenant = authenticate()

    @app.after_request
    def after(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - g.get("start", time.perf_counter()))
        log.info(json.dumps({"method": request.method, "route": route, "status": response.status_code,
                             "ms": round(1000 * (time.perf_counter() - g.get("start", time.perf_counter())), 1),
                             "tenant": g.get("tenant")}))
        return response

    @app.get("/healthz")
    def healthz():
        s = state()
        return jsonify({"status": "ok", "base_model": s.services.base.model_id,
                        "generator": getattr(s.services.generator, "name", None),
                        "generator_precision": getattr(s.services.generator, "precision", None),
                        "adapters": s.services.store.count(), "queue_depth": s.engine.queue_depth()})

    @app.get("/metrics")
    def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    def spec():
        return jsonify(openapi.document())

    return app


def shutdown(app: Flask, timeout: float = 60.0) -> None:
    """Finish in-flight generation, stop the engine, flush and close the store."""
    s = app.extensions["hyperadapter"]
    s.engine.drain(timeout)
    s.engine.stop()
    s.services.close()

"""`hyperadapter serve`: the app under gunicorn (one worker process, many threads).

One worker because the model is loaded once and the batching engine must see every request to batch
them; threads carry the concurrent requests. SIGTERM/SIGINT stop accepting connections, let in-flight
requests finish (graceful timeout), then drain the engine and close the store.
"""

from __future__ import annotations

import ipaddress
import logging

from hyperadapter.config import Settings

log = logging.getLogger("hyperadapter.api")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: Settings) -> None:
    from gunicorn.app.base import BaseApplication

    from hyperadapter.api.app import create_app, shutdown

    keys = settings.api_key_tenants()
    if not keys and not is_loopback(settings.host):
        raise SystemExit(f"refusing to listen on {settings.host} without API keys: set HYPERADAPTER_API_KEYS "
                         "(key:tenant,...) or bind to 127.0.0.1")
    if not keys:
        print(f"no API keys configured: serving without authentication on loopback only ({settings.host})", flush=True)

    class Application(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", settings.threads)
            self.cfg.set("timeout", max(120, int(settings.request_timeout_s) + 30))
            self.cfg.set("graceful_timeout", 60)
            self.cfg.set("accesslog", None)
            self.cfg.set("control_socket_disable", True)  # several servers per machine (tests) would share it
            self.cfg.set("worker_exit", lambda server, worker: shutdown(worker.wsgi) if worker.wsgi else None)

        def load(self):
            logging.basicConfig(level=logging.INFO, format="%(message)s")
            logging.getLogger("faiss.loader").setLevel(logging.WARNING)
            return create_app(settings)

    Application().run()

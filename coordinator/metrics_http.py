"""The coordinator's Prometheus endpoint: plain HTTP, one thread per request.

`/metrics` (and, as prometheus_client does, any other path) serves the main registry: a fixed
number of series at any number of participants. `/metrics/participants` serves the
per-participant registry (`per_participant_metrics = true`), whose size grows with the
federation, so that it can be scraped less often than /metrics or fetched only when needed;
without that registry it answers 404, so that a scrape job pointed at it never stores the
main registry's series a second time.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

PARTICIPANTS_PATH = "/metrics/participants"
OFF = b"per-participant metrics are off: start the coordinator with per_participant_metrics\n"

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _off(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
    return [OFF]


def metrics_app(registry: CollectorRegistry, per_participant: CollectorRegistry | None) -> App:
    """The WSGI application: PARTICIPANTS_PATH -> `per_participant` (or 404), else `registry`."""
    main: App = make_wsgi_app(registry)
    participants: App = _off if per_participant is None else make_wsgi_app(per_participant)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", "")).rstrip("/")
        return (participants if path == PARTICIPANTS_PATH else main)(environ, start_response)

    return app


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


def serve_metrics(
    address: str,
    port: int,
    registry: CollectorRegistry,
    per_participant: CollectorRegistry | None = None,
) -> WSGIServer:
    """Serve `metrics_app` on address:port (0 picks a port) in a daemon thread; the server,
    whose `server_port` is the bound port and whose `shutdown()` stops it."""
    family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    kind, *_, sockaddr = family[0]

    class Server(ThreadingWSGIServer):
        address_family = kind

    app = metrics_app(registry, per_participant)
    server = make_server(str(sockaddr[0]), port, app, Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server

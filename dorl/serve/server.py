"""Run the service: bind the socket first, load and warm the model, then serve until told to stop.

The port is bound before the model is loaded, so "port in use" is said at once. uvicorn serves
the app on that socket; on SIGTERM or SIGINT the server stops accepting connections, answers
readiness probes with 503, lets requests already in flight finish (up to `drain_s`), then the
inference thread finishes its queue and frees the model.
"""

from __future__ import annotations

import errno
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from dorl.errors import DorlError
from dorl.serve.config import ServeConfig
from dorl.serve.service import ModelService


class ServeError(DorlError):
    """The service cannot start (port in use, address not available...)."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    address = "127.0.0.1" if host == "localhost" else host
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only; a live listener still conflicts
    try:
        sock.bind((address, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is already in use: stop the other server or choose another "
                             "--port.") from None
        raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror}): give an address of this machine "
                         "with --host.") from None
    return sock


class Server:
    """One `dorl serve` instance: a bound socket, a started model service and a uvicorn server."""

    def __init__(self, artifact: str | Path, config: ServeConfig, site: str | Path | None = None) -> None:
        """Bind, load and warm up; raise a DorlError if any of it fails (nothing is left open then)."""
        from dorl.deps import require

        require("starlette", "dorl serve")
        require("uvicorn", "dorl serve")
        import uvicorn

        from dorl.serve.app import Endpoints, create_app

        self.config = config
        self.socket = bind(config.host, config.port)
        try:
            self.service = ModelService(artifact, config, site)
            self.service.start()
        except BaseException:
            self.socket.close()
            raise
        self.endpoints = Endpoints(self.service)
        app = create_app(self.service, self.endpoints)
        settings = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                  timeout_graceful_shutdown=round(config.drain_s),
                                  limit_concurrency=config.max_connections)
        endpoints = self.endpoints

        class DrainingServer(uvicorn.Server):
            """uvicorn's server, marking the drain at the first signal and returning normally after it
            (uvicorn itself re-raises the signal once drained, which would skip freeing the model)."""

            def handle_exit(self, sig: int, frame: Any) -> None:
                endpoints.draining = True  # readiness says 503 from the first signal on
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True  # a second Ctrl-C stops waiting for requests in flight
                self.should_exit = True

        self.uvicorn = DrainingServer(settings)
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = self.socket.getsockname()[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (in the main thread) or `stop()`; then drain and free the model."""
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self.service.stop()
            self.socket.close()
            self._stopped.set()

    def stop(self, wait_s: float | None = None) -> None:
        """Ask the server to drain and stop, as SIGTERM does (from any thread)."""
        self.endpoints.draining = True
        self.uvicorn.should_exit = True
        if wait_s is not None:
            self._stopped.wait(wait_s)

    def describe(self) -> str:
        service = self.service
        return (f"dorl serve: model {service.name!r} ({service.manifest['kind']}, "
                f"{service.manifest.get('precision', '?')}, max batch {service.max_batch}) ready on {self.url}")

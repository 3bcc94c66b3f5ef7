"""The HTTP routes of `dorl serve` (Starlette): KServe v2 endpoints, the cell endpoint, metrics.

Every answer that is not a success is JSON `{"error": sentence}` with a status that tells the
client what to do: 400 a bad request, 404 an unknown model or path, 413 a body over the size
limit, 415 an unknown content encoding, 422 an image that cannot be analysed, 503 (with
Retry-After) when the queue is full or the server is draining, 504 when a request waited past its
timeout. Parsing, response encoding and mask encoding run in a worker thread, never on the
event loop; inference runs in the service's own thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dorl import __version__
from dorl.errors import DorlError
from dorl.serve.batcher import QueueFull, Stopped
from dorl.serve.config import MASK_FORMATS
from dorl.serve.metrics import CONTENT_TYPE
from dorl.serve.protocol import MODEL_VERSION, ProtocolError, encode_infer_response, parse_infer_request
from dorl.serve.record import cell_record
from dorl.serve.service import ModelService

log = logging.getLogger("dorl.serve")
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]
Handler = Callable[[Request], Awaitable[Response]]


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(content, separators=(",", ":")), status, headers, media_type="application/json")


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": message}, status, headers)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a gzip/deflate Content-Encoding without ever holding more than `limit` bytes."""
    if encoding in (None, "", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported: send identity, gzip or deflate.", 415)
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"the {encoding} body cannot be decompressed ({exc}): send it whole.") from None
    if len(data) > limit:
        raise ProtocolError(f"the request decompresses to more than this server's limit of {limit} bytes: "
                            "send fewer cells per request.", 413)
    if not inflater.eof:
        raise ProtocolError(f"the {encoding} body is truncated: send it whole.")
    return data


class OverBudget(QueueFull):
    """The request bodies held in memory would pass the server's budget: answer 503 and retry later."""


class Endpoints:
    """Route handlers around one `ModelService`."""

    def __init__(self, service: ModelService) -> None:
        self.service = service
        self.draining = False
        self.held_bytes = 0  # request bodies in memory, all requests together (touched on the event loop only)

    async def read_body(self, request: Request) -> bytes:
        """The (decompressed) body: 413 past the per-request limit, 503 past the budget of all bodies held."""
        limit = self.service.config.max_request_bytes
        too_big = f"bytes, more than this server's limit of {limit}: send fewer cells per request or raise --max-request-mb."
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ProtocolError(f"the request body has {declared} {too_big}", 413)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ProtocolError(f"the request body has more than {limit} {too_big}", 413)
            self.hold(request, len(chunk))
            chunks.append(chunk)
        body = decompress(b"".join(chunks), request.headers.get("content-encoding"), limit)
        if len(body) != total:
            self.hold(request, len(body))
        return body

    def hold(self, request: Request, size: int) -> None:
        budget = self.service.config.max_inflight_bytes
        if self.held_bytes + size > budget:
            raise OverBudget(f"request bodies already fill this server's budget of {budget} bytes: retry later.")
        self.held_bytes += size
        request.state.held = getattr(request.state, "held", 0) + size

    # -- plumbing ----------------------------------------------------------------------------
    def check_model(self, request: Request) -> None:
        name = request.path_params["name"]
        if name != self.service.name:
            raise ProtocolError(f"unknown model {name!r}: this server serves {self.service.name!r}.", 404)
        version = request.path_params.get("version")
        if version is not None and version != MODEL_VERSION:
            raise ProtocolError(f"model {name!r} has only version {MODEL_VERSION}, not {version!r}.", 404)

    def retry_after(self) -> str:
        """Seconds until the queue has room again, estimated from the mean batch time."""
        metrics = self.service.metrics.inference.series.values()
        seconds, batches = sum(row[-2] for row in metrics), sum(row[-1] for row in metrics)
        mean = seconds / batches if batches else 1.0
        waiting = self.service.batcher.depth
        return str(max(1, round(mean * (waiting / self.service.max_batch + 1))))

    async def wait(self, future: Future, timeout_s: float | None) -> Any:
        limit = min(self.service.config.timeout_s, timeout_s or float("inf"))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), limit)
        except asyncio.TimeoutError:
            self.service.metrics.reject("timeout")
            raise ProtocolError(f"no answer within {limit:g} s ({self.service.batcher.depth} requests waiting): "
                                "the server is overloaded; retry later, or raise --timeout.", 504) from None

    def refuse_if_draining(self) -> None:
        """New work is refused once a drain began; requests that arrived before it run to the end."""
        if self.draining:
            raise Stopped("the server is shutting down and takes no new requests: retry on another instance.")

    def endpoint(self, name: str, handler: Handler) -> Handler:
        """`handler` with errors turned into v2 error answers, and its status and time counted."""

        async def run(request: Request) -> Response:
            start = time.perf_counter()
            try:
                response = await handler(request)
            except ProtocolError as exc:
                response = error_response(str(exc), exc.status)
                if exc.status == 413:
                    self.service.metrics.reject("too_large")
            except (QueueFull, Stopped) as exc:
                reason = "draining" if isinstance(exc, Stopped) else "memory" if isinstance(exc, OverBudget) else "queue_full"
                self.service.metrics.reject(reason)
                response = error_response(str(exc), 503, {"Retry-After": self.retry_after()})
            except DorlError as exc:  # the runner refused or failed on a well-formed request
                response = error_response(str(exc), 500)
            except Exception as exc:
                log.exception("request to %s failed", request.url.path)
                response = error_response(f"internal error ({type(exc).__name__}: {exc}): see the server's log.", 500)
            finally:
                self.held_bytes -= getattr(request.state, "held", 0)
            self.service.metrics.request(name, response.status_code, time.perf_counter() - start)
            return response

        return run

    # -- health and metadata -----------------------------------------------------------------
    async def server_metadata(self, request: Request) -> Response:
        return json_response({"name": "dorl", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = self.service.ready and not self.draining
        return json_response({"ready": ready}, 200 if ready else 503)

    async def model_ready(self, request: Request) -> Response:
        self.check_model(request)
        return await self.ready(request)

    async def model_metadata(self, request: Request) -> Response:
        self.check_model(request)
        return json_response(self.service.metadata())

    async def model_config(self, request: Request) -> Response:
        self.check_model(request)
        return json_response(self.service.model_config())

    async def metrics(self, request: Request) -> Response:
        return Response(self.service.metrics.render(), media_type=CONTENT_TYPE)

    # -- inference ---------------------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        self.check_model(request)
        self.refuse_if_draining()
        service = self.service
        body = await self.read_body(request)
        parsed = await run_in_threadpool(parse_infer_request, body, request.headers.get(HEADER_LENGTH),
                                         service.inputs, service.outputs, service.max_batch)
        del body
        future = service.submit_tensors(parsed.inputs[service.analyzer.input_name])
        outputs = await self.wait(future, parsed.timeout_s)
        content, header_length = await run_in_threadpool(encode_infer_response, service.name, parsed, outputs,
                                                         service.analyzer.class_names)
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(content, headers={HEADER_LENGTH: str(header_length)}, media_type="application/octet-stream")

    async def analyze(self, request: Request) -> Response:
        self.check_model(request)
        self.refuse_if_draining()
        service = self.service
        mask_format = request.query_params.get("mask", service.config.mask_format)
        if mask_format not in MASK_FORMATS:
            raise ProtocolError(f"mask={mask_format!r} is not one of {', '.join(MASK_FORMATS)}.")
        image = await self.read_body(request)
        if not image:
            raise ProtocolError("the request body is empty: send the encoded image (JPEG, PNG, BMP, TIFF) as the body.")
        [result] = await self.wait(service.submit_cell(image), None)
        record = await run_in_threadpool(cell_record, result, mask_format, service.site)
        record["source"] = request.headers.get("x-dorl-source", record["source"])
        return json_response(record, 200 if record["error"] is None else 422)


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    hint = "see GET /v2/models/<name> for this server's model" if status == 404 else "check the HTTP method"
    return error_response(f"{request.method} {request.url.path} is not an endpoint of this server: {hint}.", status)


def create_app(service: ModelService, endpoints: Endpoints | None = None) -> Starlette:
    """The Starlette application serving `service` (already started)."""
    e = endpoints or Endpoints(service)
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2", e.endpoint("metadata", e.server_metadata)),
        Route("/v2/health/live", e.endpoint("health", e.live)),
        Route("/v2/health/ready", e.endpoint("health", e.ready)),
        Route("/metrics", e.endpoint("metrics", e.metrics)),
    ]
    for base in (model, versioned):
        routes += [
            Route(base, e.endpoint("metadata", e.model_metadata)),
            Route(base + "/ready", e.endpoint("health", e.model_ready)),
            Route(base + "/config", e.endpoint("metadata", e.model_config)),
            Route(base + "/infer", e.endpoint("infer", e.infer), methods=["POST"]),
            Route(base + "/analyze", e.endpoint("analyze", e.analyze), methods=["POST"]),
        ]
    return Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_found})

"""`dorl serve`: serve an artifact over HTTP with the KServe v2 protocol."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from dorl.commands.common import TtaOption, user_errors


@user_errors
def serve(
    artifact: Annotated[Path, typer.Argument(help="An exported ONNX artifact folder or a TensorRT engine folder.")],
    host: Annotated[str, typer.Option(help="Address to listen on (loopback unless --allow-remote).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one (printed at start).")] = 8000,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Permit a --host other machines can reach (e.g. 0.0.0.0).")
    ] = False,
    name: Annotated[str, typer.Option(help="Model name clients address: /v2/models/NAME.")] = "dorl",
    max_batch: Annotated[
        int | None, typer.Option(min=1, help="Cells per inference batch (default: the engine's max, or 8).")
    ] = None,
    max_delay_ms: Annotated[float, typer.Option(help="How long a batch waits for more requests (ms).")] = 5.0,
    queue_size: Annotated[int, typer.Option(help="Requests that may wait; beyond it: 503 with Retry-After.")] = 64,
    max_request_mb: Annotated[float, typer.Option(help="Largest request body, after decompression (MiB).")] = 16.0,
    max_inflight_mb: Annotated[
        float, typer.Option(help="Request bodies held in memory at once, all requests (MiB); beyond it: 503.")
    ] = 256.0,
    timeout: Annotated[float, typer.Option(help="Seconds a request may wait for its answer (then 504).")] = 30.0,
    drain: Annotated[float, typer.Option(help="On SIGTERM, seconds in-flight requests may take to finish.")] = 30.0,
    threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Top probability below which a cell is flagged uncertain.")
    ] = 0.5,
    mask: Annotated[str, typer.Option(help="Default mask encoding of /analyze: png, rle or none.")] = "png",
    backend: Annotated[str, typer.Option(help="auto (from the artifact), onnxruntime or tensorrt.")] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime intra-op threads.")] = None,
    site: Annotated[
        Path | None, typer.Option(help="Site profile from `dorl adapt` applied by the /analyze endpoint.")
    ] = None,
    tta: TtaOption = None,
) -> None:
    """Load the artifact once and answer KServe v2 requests (and whole cells) until SIGTERM."""
    from dorl.serve.config import ServeConfig
    from dorl.serve.server import Server

    config = ServeConfig(host=host, port=port, allow_remote=allow_remote, model_name=name, max_batch=max_batch,
                         max_delay_ms=max_delay_ms, queue_size=queue_size,
                         max_request_bytes=int(max_request_mb * (1 << 20)),
                         max_inflight_bytes=int(max_inflight_mb * (1 << 20)), timeout_s=timeout, drain_s=drain,
                         threshold=threshold, mask_format=mask, backend=backend, threads=threads, tta=tta)
    server = Server(artifact, config, site)
    for sig in (signal.SIGTERM, signal.SIGINT):  # from "ready" on, a signal drains (uvicorn takes over while it runs)
        signal.signal(sig, server.uvicorn.handle_exit)
    typer.echo(server.describe())
    typer.echo(f"  endpoints: {server.url}/v2/models/{name}/infer (KServe v2), {server.url}/v2/models/{name}/analyze "
               f"(image bytes), {server.url}/metrics")
    server.run()
    typer.echo("dorl serve: stopped after finishing the requests in flight.", err=True)

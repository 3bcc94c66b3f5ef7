"""`dorl serve`: a long-lived inference service speaking the KServe v2 protocol over HTTP.

One process loads an artifact once and answers many clients: the graph's tensors through the
standard `/v2/models/<name>/infer` endpoint (so Triton's own clients work unchanged), and whole
cells (encoded image bytes in, the analyzer's record out) through `/v2/models/<name>/analyze`.
Modules: `config` (the service's options), `protocol` (v2 requests and responses), `batcher`
(dynamic batching in one inference thread), `service` (the model behind the endpoints), `record`
(what a cell answer says), `metrics` (Prometheus text), `app` (the HTTP routes), `server` (binding,
start-up and graceful drain), `triton` (a model repository for Triton Inference Server).

Importing this package loads nothing heavy: starlette and uvicorn are imported by `app`/`server`.
"""

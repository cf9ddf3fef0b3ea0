"""Prometheus metrics shared by every service, and the `/metrics` HTTP endpoint.

Stage latencies are histograms with buckets around the per-turn budget (tens to hundreds of ms), so
each service's share of a turn is visible on the dashboard. Labels never carry caller data.
"""

from __future__ import annotations

import errno

from prometheus_client import Counter, Histogram, start_http_server

from services.kit.config import ConfigError

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)

RPC_LATENCY = Histogram(
    "quietline_rpc_duration_seconds",
    "Time from request to the end of the response, per gRPC method.",
    ["service", "method", "code"],
    buckets=LATENCY_BUCKETS_S,
)
STAGE_LATENCY = Histogram(
    "quietline_stage_duration_seconds",
    "Latency of one step of a turn (e.g. asr final, first say, first audio).",
    ["service", "stage"],
    buckets=LATENCY_BUCKETS_S,
)
ERRORS = Counter("quietline_errors_total", "Errors by service and kind.", ["service", "kind"])


def serve_metrics(host: str, port: int) -> None:
    """Start the `/metrics` endpoint in a background thread; a busy port is a ConfigError."""
    try:
        start_http_server(port, addr=host)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"metrics port {host}:{port} is already in use: stop the process holding it "
                f"(`quietline down`, or `ss -ltnp 'sport = :{port}'`) or set another metrics_port"
            ) from None
        raise

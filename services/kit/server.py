"""The grpc.aio server every QuietLine service runs in.

`run_service` wires the parts no service should repeat: JSON logs, the offline switches, the
standard gRPC health and reflection services, the Prometheus endpoint, a timing interceptor, a clear
error for a busy port, and graceful shutdown on SIGTERM/SIGINT (health goes NOT_SERVING first, then
in-flight calls get a grace period).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.kit.config import ConfigError, Endpoint, QuietLineSettings, load_settings
from services.kit.logs import configure_logging
from services.kit.metrics import ERRORS, RPC_LATENCY, serve_metrics
from services.kit.offline import enforce_offline

SHUTDOWN_GRACE_S = 5.0


@dataclass
class ServiceSpec:
    """What a service contributes to the kit's server.

    `setup` loads models and opens connections, then registers servicers on the server; it returns the
    fully qualified gRPC service names to advertise via health and reflection. `teardown` runs after
    the server has stopped.
    """

    name: str
    endpoint: Callable[[QuietLineSettings], Endpoint]
    setup: Callable[[grpc.aio.Server, QuietLineSettings], Awaitable[list[str]]]
    teardown: Callable[[], Awaitable[None]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Largest request message the server accepts; None keeps grpc's 4 MiB default.
    max_request_bytes: Callable[[QuietLineSettings], int] | None = None


class _TimingInterceptor(grpc.aio.ServerInterceptor):
    """Records every RPC's duration and status code in the shared histogram."""

    def __init__(self, service: str) -> None:
        self.service = service

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        service = self.service

        def observe(start: float, context: Any) -> None:
            code = context.code() if hasattr(context, "code") and context.code() is not None else grpc.StatusCode.OK
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            RPC_LATENCY.labels(service, method, name).observe(time.perf_counter() - start)

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                start = time.perf_counter()
                try:
                    return await inner(request, context)
                finally:
                    observe(start, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request, context):
                start = time.perf_counter()
                try:
                    async for item in inner_us(request, context):
                        yield item
                finally:
                    observe(start, context)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            inner_ss = handler.stream_stream

            async def stream_stream(request_iterator, context):
                start = time.perf_counter()
                try:
                    async for item in inner_ss(request_iterator, context):
                        yield item
                finally:
                    observe(start, context)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(request_iterator, context):
                start = time.perf_counter()
                try:
                    return await inner_su(request_iterator, context)
                finally:
                    observe(start, context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        return handler


async def serve(spec: ServiceSpec, settings: QuietLineSettings) -> None:
    """Run the service until SIGTERM/SIGINT, then shut down gracefully."""
    log = logging.getLogger(f"quietline.{spec.name}")
    endpoint = spec.endpoint(settings)
    if endpoint.host not in ("127.0.0.1", "localhost", "::1"):
        # Listening beyond loopback needs mTLS (ARCHITECTURE.md); until that is configurable, refuse.
        raise ConfigError(
            f"{spec.name}: endpoint.host {endpoint.host} is not loopback; non-loopback listening requires "
            "mTLS, which this build does not configure yet: use 127.0.0.1"
        )
    options = []
    if spec.max_request_bytes is not None:
        options.append(("grpc.max_receive_message_length", spec.max_request_bytes(settings)))
    server = grpc.aio.server(interceptors=[_TimingInterceptor(spec.name)], options=options)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        bound = server.add_insecure_port(endpoint.target)
    except RuntimeError:
        bound = 0
    if not bound:
        raise ConfigError(
            f"{spec.name}: port {endpoint.target} is already in use: stop the process holding it "
            f"(`quietline down`, or `ss -ltnp 'sport = :{endpoint.port}'`) or set {spec.name}.endpoint.port"
        )
    serve_metrics(endpoint.host, endpoint.metrics_port)
    # The port is bound (so a busy port fails fast) but not served until the models are loaded and
    # the servicers registered: `quietline up` waits for real readiness, and grpc keeps its fast path
    # for handlers registered before start.
    started = time.perf_counter()
    names = await spec.setup(server, settings)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving",
        extra={"endpoint": endpoint.target, "metrics_port": endpoint.metrics_port,
               "startup_s": round(time.perf_counter() - started, 3)},
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping", extra={"grace_s": SHUTDOWN_GRACE_S})
    await health_servicer.enter_graceful_shutdown()
    await server.stop(SHUTDOWN_GRACE_S)
    if spec.teardown:
        await spec.teardown()
    log.info("stopped")


def run_service(spec: ServiceSpec, argv: list[str] | None = None) -> int:
    """Entry point of a service process: `python -m services.<name> [--profile P] [--config FILE]`."""
    parser = argparse.ArgumentParser(prog=f"quietline-{spec.name}", description=spec.setup.__doc__)
    parser.add_argument("--profile", choices=["cpu", "gpu"], default=None)
    parser.add_argument("--config", default=None, help="operator YAML file over the profile")
    args = parser.parse_args(argv)
    enforce_offline()
    log = configure_logging(spec.name)
    try:
        settings = load_settings(args.config, args.profile)
        asyncio.run(serve(spec, settings))
    except ConfigError as err:
        ERRORS.labels(spec.name, "config").inc()
        log.error(str(err), extra={"error": "config"})
        print(f"quietline-{spec.name}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0

"""Outgoing gRPC channels with a deadline on every call.

A service or client never calls another service without a deadline: `open_channel` installs an
interceptor that applies the configured default to any call that sets no timeout of its own.
"""

from __future__ import annotations

import grpc


class _DefaultDeadline(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def _with_deadline(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if details.timeout is not None:
            return details
        return grpc.aio.ClientCallDetails(
            details.method, self.seconds, details.metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._with_deadline(details), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._with_deadline(details), request)

    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._with_deadline(details), request_iterator)

    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._with_deadline(details), request_iterator)


def open_channel(target: str, default_deadline_s: float) -> grpc.aio.Channel:
    """An asyncio channel to `target` whose calls all carry a deadline (default_deadline_s unless set)."""
    return grpc.aio.insecure_channel(target, interceptors=[_DefaultDeadline(default_deadline_s)])

"""Outgoing gRPC channels with a deadline on every call.

A service or client never calls another service without a deadline: `open_channel` installs
interceptors that apply the configured default to any call that sets no timeout of its own.
(grpc.aio files each interceptor under one call shape only, hence one class per shape.)
"""

from __future__ import annotations

import grpc

MAX_REPLY_BYTES = 64 * 1024 * 1024


class _DefaultDeadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def _with_deadline(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if details.timeout is not None:
            return details
        return grpc.aio.ClientCallDetails(
            details.method, self.seconds, details.metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnaryDeadline(_DefaultDeadline, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._with_deadline(details), request)


class _UnaryStreamDeadline(_DefaultDeadline, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._with_deadline(details), request)


class _StreamUnaryDeadline(_DefaultDeadline, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._with_deadline(details), request_iterator)


class _StreamStreamDeadline(_DefaultDeadline, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._with_deadline(details), request_iterator)


def open_channel(target: str, default_deadline_s: float) -> grpc.aio.Channel:
    """An asyncio channel to `target` whose calls all carry a deadline (default_deadline_s unless set)."""
    interceptors = [shape(default_deadline_s) for shape in
                    (_UnaryUnaryDeadline, _UnaryStreamDeadline, _StreamUnaryDeadline, _StreamStreamDeadline)]
    # Replies may exceed grpc's 4 MiB default (a large knowledge document returned by GetDocument).
    options = [("grpc.max_receive_message_length", MAX_REPLY_BYTES)]
    return grpc.aio.insecure_channel(target, interceptors=interceptors, options=options)

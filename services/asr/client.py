"""A small async client of quietline.v1.Asr: stream audio in, hypotheses and speech events out.

    config = asr_pb2.RecognitionConfig(format=common_pb2.AudioFormat(
        encoding=common_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=16000), interim_results=True)
    async for response in transcribe_stream(channel, chunks(), config):
        if response.HasField("hypothesis") and response.hypothesis.is_final: ...

The request stream is: the config, then each item of `audio_chunks` (bytes as audio, or a
RecognitionControl such as FLUSH), then a half-close, which makes the service finalise what is pending.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import grpc

from quietline.v1 import asr_pb2, asr_pb2_grpc

FLUSH = asr_pb2.RecognitionControl(action=asr_pb2.RecognitionControl.ACTION_FLUSH)


async def _requests(
    config: asr_pb2.RecognitionConfig, audio_chunks: AsyncIterable[bytes | asr_pb2.RecognitionControl]
) -> AsyncIterator[asr_pb2.RecognizeRequest]:
    yield asr_pb2.RecognizeRequest(config=config)
    async for item in audio_chunks:
        if isinstance(item, asr_pb2.RecognitionControl):
            yield asr_pb2.RecognizeRequest(control=item)
        else:
            yield asr_pb2.RecognizeRequest(audio=bytes(item))


async def transcribe_stream(
    stub_or_channel: asr_pb2_grpc.AsrStub | grpc.aio.Channel,
    audio_chunks: AsyncIterable[bytes | asr_pb2.RecognitionControl],
    config: asr_pb2.RecognitionConfig,
    timeout_s: float | None = None,
) -> AsyncIterator[asr_pb2.RecognizeResponse]:
    """Run one Recognize stream and yield its responses until the service closes it.

    `audio_chunks` yields wire audio in `config.format` (any chunk size) and, where the caller's
    turn ends, `FLUSH` to get a final while the stream stays open. Errors arrive as grpc.aio.AioRpcError.
    Use a channel from services.kit.channels.open_channel (or pass timeout_s) so the call has a deadline.
    """
    stub = stub_or_channel if isinstance(stub_or_channel, asr_pb2_grpc.AsrStub) else asr_pb2_grpc.AsrStub(stub_or_channel)
    call = stub.Recognize(_requests(config, audio_chunks), timeout=timeout_s)
    try:
        async for response in call:
            yield response
    finally:
        # Leaving early (break, error, cancellation) cancels the RPC so the service frees the stream.
        call.cancel()

from quietline.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SynthesizeStreamRequest(_message.Message):
    __slots__ = ("settings", "text")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    settings: SynthesizeRequest
    text: str
    def __init__(self, settings: _Optional[_Union[SynthesizeRequest, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class SynthesizeRequest(_message.Message):
    __slots__ = ("call", "text", "voice", "format", "chunk_ms", "speaking_rate", "language")
    CALL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_MS_FIELD_NUMBER: _ClassVar[int]
    SPEAKING_RATE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    call: _common_pb2.CallRef
    text: str
    voice: str
    format: _common_pb2.AudioFormat
    chunk_ms: int
    speaking_rate: float
    language: str
    def __init__(self, call: _Optional[_Union[_common_pb2.CallRef, _Mapping]] = ..., text: _Optional[str] = ..., voice: _Optional[str] = ..., format: _Optional[_Union[_common_pb2.AudioFormat, _Mapping]] = ..., chunk_ms: _Optional[int] = ..., speaking_rate: _Optional[float] = ..., language: _Optional[str] = ...) -> None: ...

class SynthesizeResponse(_message.Message):
    __slots__ = ("audio", "format", "sentence_index", "sentence_text", "last")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SENTENCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    SENTENCE_TEXT_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    format: _common_pb2.AudioFormat
    sentence_index: int
    sentence_text: str
    last: bool
    def __init__(self, audio: _Optional[bytes] = ..., format: _Optional[_Union[_common_pb2.AudioFormat, _Mapping]] = ..., sentence_index: _Optional[int] = ..., sentence_text: _Optional[str] = ..., last: _Optional[bool] = ...) -> None: ...

from quietline.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CallContext(_message.Message):
    __slots__ = ("service_line", "language", "dtmf")
    SERVICE_LINE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    DTMF_FIELD_NUMBER: _ClassVar[int]
    service_line: str
    language: str
    dtmf: str
    def __init__(self, service_line: _Optional[str] = ..., language: _Optional[str] = ..., dtmf: _Optional[str] = ...) -> None: ...

class TurnRequest(_message.Message):
    __slots__ = ("call", "transcript", "asr_confidence", "context")
    CALL_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    ASR_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    call: _common_pb2.CallRef
    transcript: str
    asr_confidence: float
    context: CallContext
    def __init__(self, call: _Optional[_Union[_common_pb2.CallRef, _Mapping]] = ..., transcript: _Optional[str] = ..., asr_confidence: _Optional[float] = ..., context: _Optional[_Union[CallContext, _Mapping]] = ...) -> None: ...

class Say(_message.Message):
    __slots__ = ("text", "citations", "cached_prompt")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_FIELD_NUMBER: _ClassVar[int]
    text: str
    citations: _containers.RepeatedCompositeFieldContainer[_common_pb2.Citation]
    cached_prompt: bool
    def __init__(self, text: _Optional[str] = ..., citations: _Optional[_Iterable[_Union[_common_pb2.Citation, _Mapping]]] = ..., cached_prompt: _Optional[bool] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("kind", "target", "briefing")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Action.Kind]
        KIND_TRANSFER: _ClassVar[Action.Kind]
        KIND_HANG_UP: _ClassVar[Action.Kind]
        KIND_COLLECT_DTMF: _ClassVar[Action.Kind]
    KIND_UNSPECIFIED: Action.Kind
    KIND_TRANSFER: Action.Kind
    KIND_HANG_UP: Action.Kind
    KIND_COLLECT_DTMF: Action.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    BRIEFING_FIELD_NUMBER: _ClassVar[int]
    kind: Action.Kind
    target: str
    briefing: str
    def __init__(self, kind: _Optional[_Union[Action.Kind, str]] = ..., target: _Optional[str] = ..., briefing: _Optional[str] = ...) -> None: ...

class RouteDecision(_message.Message):
    __slots__ = ("route", "reason")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    route: str
    reason: str
    def __init__(self, route: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class TurnEvent(_message.Message):
    __slots__ = ("route", "say", "action", "end_of_turn")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    SAY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    END_OF_TURN_FIELD_NUMBER: _ClassVar[int]
    route: RouteDecision
    say: Say
    action: Action
    end_of_turn: bool
    def __init__(self, route: _Optional[_Union[RouteDecision, _Mapping]] = ..., say: _Optional[_Union[Say, _Mapping]] = ..., action: _Optional[_Union[Action, _Mapping]] = ..., end_of_turn: _Optional[bool] = ...) -> None: ...

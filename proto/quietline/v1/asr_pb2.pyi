from quietline.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecognitionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECOGNITION_MODE_UNSPECIFIED: _ClassVar[RecognitionMode]
    RECOGNITION_MODE_GENERAL: _ClassVar[RecognitionMode]
    RECOGNITION_MODE_DIGITS: _ClassVar[RecognitionMode]
    RECOGNITION_MODE_ALPHANUMERIC: _ClassVar[RecognitionMode]
    RECOGNITION_MODE_YES_NO: _ClassVar[RecognitionMode]
RECOGNITION_MODE_UNSPECIFIED: RecognitionMode
RECOGNITION_MODE_GENERAL: RecognitionMode
RECOGNITION_MODE_DIGITS: RecognitionMode
RECOGNITION_MODE_ALPHANUMERIC: RecognitionMode
RECOGNITION_MODE_YES_NO: RecognitionMode

class RecognitionConfig(_message.Message):
    __slots__ = ("call", "format", "language", "mode", "hotwords", "interim_results")
    CALL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HOTWORDS_FIELD_NUMBER: _ClassVar[int]
    INTERIM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    call: _common_pb2.CallRef
    format: _common_pb2.AudioFormat
    language: str
    mode: RecognitionMode
    hotwords: _containers.RepeatedScalarFieldContainer[str]
    interim_results: bool
    def __init__(self, call: _Optional[_Union[_common_pb2.CallRef, _Mapping]] = ..., format: _Optional[_Union[_common_pb2.AudioFormat, _Mapping]] = ..., language: _Optional[str] = ..., mode: _Optional[_Union[RecognitionMode, str]] = ..., hotwords: _Optional[_Iterable[str]] = ..., interim_results: _Optional[bool] = ...) -> None: ...

class RecognitionControl(_message.Message):
    __slots__ = ("action",)
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[RecognitionControl.Action]
        ACTION_FLUSH: _ClassVar[RecognitionControl.Action]
    ACTION_UNSPECIFIED: RecognitionControl.Action
    ACTION_FLUSH: RecognitionControl.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    action: RecognitionControl.Action
    def __init__(self, action: _Optional[_Union[RecognitionControl.Action, str]] = ...) -> None: ...

class RecognizeRequest(_message.Message):
    __slots__ = ("config", "audio", "control")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    config: RecognitionConfig
    audio: bytes
    control: RecognitionControl
    def __init__(self, config: _Optional[_Union[RecognitionConfig, _Mapping]] = ..., audio: _Optional[bytes] = ..., control: _Optional[_Union[RecognitionControl, _Mapping]] = ...) -> None: ...

class WordTiming(_message.Message):
    __slots__ = ("word", "start_ms", "end_ms", "probability")
    WORD_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    word: str
    start_ms: int
    end_ms: int
    probability: float
    def __init__(self, word: _Optional[str] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., probability: _Optional[float] = ...) -> None: ...

class Hypothesis(_message.Message):
    __slots__ = ("stable_text", "unstable_text", "is_final", "confidence", "language", "words", "audio_start_ms", "audio_end_ms")
    STABLE_TEXT_FIELD_NUMBER: _ClassVar[int]
    UNSTABLE_TEXT_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_START_MS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_END_MS_FIELD_NUMBER: _ClassVar[int]
    stable_text: str
    unstable_text: str
    is_final: bool
    confidence: float
    language: str
    words: _containers.RepeatedCompositeFieldContainer[WordTiming]
    audio_start_ms: int
    audio_end_ms: int
    def __init__(self, stable_text: _Optional[str] = ..., unstable_text: _Optional[str] = ..., is_final: _Optional[bool] = ..., confidence: _Optional[float] = ..., language: _Optional[str] = ..., words: _Optional[_Iterable[_Union[WordTiming, _Mapping]]] = ..., audio_start_ms: _Optional[int] = ..., audio_end_ms: _Optional[int] = ...) -> None: ...

class SpeechEvent(_message.Message):
    __slots__ = ("kind", "offset_ms")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[SpeechEvent.Kind]
        KIND_SPEECH_STARTED: _ClassVar[SpeechEvent.Kind]
        KIND_SPEECH_STOPPED: _ClassVar[SpeechEvent.Kind]
    KIND_UNSPECIFIED: SpeechEvent.Kind
    KIND_SPEECH_STARTED: SpeechEvent.Kind
    KIND_SPEECH_STOPPED: SpeechEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    kind: SpeechEvent.Kind
    offset_ms: int
    def __init__(self, kind: _Optional[_Union[SpeechEvent.Kind, str]] = ..., offset_ms: _Optional[int] = ...) -> None: ...

class RecognizeResponse(_message.Message):
    __slots__ = ("hypothesis", "speech_event")
    HYPOTHESIS_FIELD_NUMBER: _ClassVar[int]
    SPEECH_EVENT_FIELD_NUMBER: _ClassVar[int]
    hypothesis: Hypothesis
    speech_event: SpeechEvent
    def __init__(self, hypothesis: _Optional[_Union[Hypothesis, _Mapping]] = ..., speech_event: _Optional[_Union[SpeechEvent, _Mapping]] = ...) -> None: ...

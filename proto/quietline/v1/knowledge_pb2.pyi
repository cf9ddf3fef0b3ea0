from quietline.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchRequest(_message.Message):
    __slots__ = ("call", "query", "top_k", "collections")
    CALL_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    call: _common_pb2.CallRef
    query: str
    top_k: int
    collections: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, call: _Optional[_Union[_common_pb2.CallRef, _Mapping]] = ..., query: _Optional[str] = ..., top_k: _Optional[int] = ..., collections: _Optional[_Iterable[str]] = ...) -> None: ...

class Passage(_message.Message):
    __slots__ = ("document_id", "title", "section", "text", "score", "collection", "start_char", "end_char", "source_uri")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SECTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    START_CHAR_FIELD_NUMBER: _ClassVar[int]
    END_CHAR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    title: str
    section: str
    text: str
    score: float
    collection: str
    start_char: int
    end_char: int
    source_uri: str
    def __init__(self, document_id: _Optional[str] = ..., title: _Optional[str] = ..., section: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., collection: _Optional[str] = ..., start_char: _Optional[int] = ..., end_char: _Optional[int] = ..., source_uri: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("passages",)
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    passages: _containers.RepeatedCompositeFieldContainer[Passage]
    def __init__(self, passages: _Optional[_Iterable[_Union[Passage, _Mapping]]] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("document_id", "title", "content", "source_uri", "collection")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    title: str
    content: str
    source_uri: str
    collection: str
    def __init__(self, document_id: _Optional[str] = ..., title: _Optional[str] = ..., content: _Optional[str] = ..., source_uri: _Optional[str] = ..., collection: _Optional[str] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("document",)
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    document: Document
    def __init__(self, document: _Optional[_Union[Document, _Mapping]] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("documents_added", "documents_updated", "documents_unchanged", "chunks_written")
    DOCUMENTS_ADDED_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_UPDATED_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    documents_added: int
    documents_updated: int
    documents_unchanged: int
    chunks_written: int
    def __init__(self, documents_added: _Optional[int] = ..., documents_updated: _Optional[int] = ..., documents_unchanged: _Optional[int] = ..., chunks_written: _Optional[int] = ...) -> None: ...

from quietline.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]
    SEARCH_MODE_VECTOR: _ClassVar[SearchMode]
    SEARCH_MODE_LEXICAL: _ClassVar[SearchMode]

class DocumentKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOCUMENT_KIND_ARTICLE: _ClassVar[DocumentKind]
    DOCUMENT_KIND_FAQ: _ClassVar[DocumentKind]
SEARCH_MODE_HYBRID: SearchMode
SEARCH_MODE_VECTOR: SearchMode
SEARCH_MODE_LEXICAL: SearchMode
DOCUMENT_KIND_ARTICLE: DocumentKind
DOCUMENT_KIND_FAQ: DocumentKind

class SearchRequest(_message.Message):
    __slots__ = ("call", "query", "top_k", "collections", "mode", "distinct_documents", "verbatim")
    CALL_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    VERBATIM_FIELD_NUMBER: _ClassVar[int]
    call: _common_pb2.CallRef
    query: str
    top_k: int
    collections: _containers.RepeatedScalarFieldContainer[str]
    mode: SearchMode
    distinct_documents: bool
    verbatim: bool
    def __init__(self, call: _Optional[_Union[_common_pb2.CallRef, _Mapping]] = ..., query: _Optional[str] = ..., top_k: _Optional[int] = ..., collections: _Optional[_Iterable[str]] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., distinct_documents: _Optional[bool] = ..., verbatim: _Optional[bool] = ...) -> None: ...

class Passage(_message.Message):
    __slots__ = ("document_id", "title", "section", "text", "score", "collection", "start_char", "end_char", "source_uri", "version", "effective_date", "kind", "snippet", "snippet_start", "snippet_end", "chunk_hash")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SECTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    START_CHAR_FIELD_NUMBER: _ClassVar[int]
    END_CHAR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_DATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_START_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_END_FIELD_NUMBER: _ClassVar[int]
    CHUNK_HASH_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    title: str
    section: str
    text: str
    score: float
    collection: str
    start_char: int
    end_char: int
    source_uri: str
    version: int
    effective_date: str
    kind: DocumentKind
    snippet: str
    snippet_start: int
    snippet_end: int
    chunk_hash: str
    def __init__(self, document_id: _Optional[str] = ..., title: _Optional[str] = ..., section: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., collection: _Optional[str] = ..., start_char: _Optional[int] = ..., end_char: _Optional[int] = ..., source_uri: _Optional[str] = ..., version: _Optional[int] = ..., effective_date: _Optional[str] = ..., kind: _Optional[_Union[DocumentKind, str]] = ..., snippet: _Optional[str] = ..., snippet_start: _Optional[int] = ..., snippet_end: _Optional[int] = ..., chunk_hash: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("passages",)
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    passages: _containers.RepeatedCompositeFieldContainer[Passage]
    def __init__(self, passages: _Optional[_Iterable[_Union[Passage, _Mapping]]] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("document_id", "title", "content", "source_uri", "collection", "effective_date", "kind")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_DATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    title: str
    content: str
    source_uri: str
    collection: str
    effective_date: str
    kind: DocumentKind
    def __init__(self, document_id: _Optional[str] = ..., title: _Optional[str] = ..., content: _Optional[str] = ..., source_uri: _Optional[str] = ..., collection: _Optional[str] = ..., effective_date: _Optional[str] = ..., kind: _Optional[_Union[DocumentKind, str]] = ...) -> None: ...

class IngestOptions(_message.Message):
    __slots__ = ("prune_source_prefix",)
    PRUNE_SOURCE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    prune_source_prefix: str
    def __init__(self, prune_source_prefix: _Optional[str] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("document", "options")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    document: Document
    options: IngestOptions
    def __init__(self, document: _Optional[_Union[Document, _Mapping]] = ..., options: _Optional[_Union[IngestOptions, _Mapping]] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("documents_added", "documents_updated", "documents_unchanged", "chunks_written", "documents_removed")
    DOCUMENTS_ADDED_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_UPDATED_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    documents_added: int
    documents_updated: int
    documents_unchanged: int
    chunks_written: int
    documents_removed: int
    def __init__(self, documents_added: _Optional[int] = ..., documents_updated: _Optional[int] = ..., documents_unchanged: _Optional[int] = ..., chunks_written: _Optional[int] = ..., documents_removed: _Optional[int] = ...) -> None: ...

class RemoveDocumentsRequest(_message.Message):
    __slots__ = ("collection", "document_ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    document_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., document_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoveDocumentsResponse(_message.Message):
    __slots__ = ("documents_removed",)
    DOCUMENTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    documents_removed: int
    def __init__(self, documents_removed: _Optional[int] = ...) -> None: ...

class GetDocumentRequest(_message.Message):
    __slots__ = ("collection", "document_id", "version")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    document_id: str
    version: int
    def __init__(self, collection: _Optional[str] = ..., document_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DocumentVersion(_message.Message):
    __slots__ = ("document", "version", "current", "created_at", "superseded_at", "removed")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDED_AT_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    document: Document
    version: int
    current: bool
    created_at: str
    superseded_at: str
    removed: bool
    def __init__(self, document: _Optional[_Union[Document, _Mapping]] = ..., version: _Optional[int] = ..., current: _Optional[bool] = ..., created_at: _Optional[str] = ..., superseded_at: _Optional[str] = ..., removed: _Optional[bool] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CollectionStats(_message.Message):
    __slots__ = ("collection", "documents", "chunks", "versions", "removed_documents", "last_ingested_at")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: int
    chunks: int
    versions: int
    removed_documents: int
    last_ingested_at: str
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[int] = ..., chunks: _Optional[int] = ..., versions: _Optional[int] = ..., removed_documents: _Optional[int] = ..., last_ingested_at: _Optional[str] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("collections", "embedding_model", "chunk_words")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_WORDS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionStats]
    embedding_model: str
    chunk_words: int
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionStats, _Mapping]]] = ..., embedding_model: _Optional[str] = ..., chunk_words: _Optional[int] = ...) -> None: ...

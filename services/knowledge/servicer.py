"""The Knowledge gRPC servicer and the Indexer that turns documents into stored, embedded chunks.

Ingest is streamed: documents are checked against their stored content hash, unchanged ones cost one
lookup, and the rest are chunked; chunks whose embedding input is already stored reuse that vector,
the others are embedded in batches across documents; then each document is written in its own
transaction as a new version. A stream may end by pruning the documents of a source folder it did not
carry. Search refuses unknown collections and foreign-language queries, rewrites conversational
queries, and ranks by vector, full text or their fusion in PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import TypeVar

import grpc
import psycopg
import psycopg_pool

from quietline.v1 import knowledge_pb2, knowledge_pb2_grpc
from services.kit.config import KnowledgeSettings
from services.kit.metrics import ERRORS, STAGE_LATENCY
from services.knowledge.chunking import Chunk, chunk_markdown
from services.knowledge.embedder import Embedder
from services.knowledge.query_analysis import LANGUAGE_NAMES, QueryLanguage, best_snippet, rewrite_query
from services.knowledge.store import EmbeddedChunk, KnowledgeStore, StoredDocument

SERVICE = "knowledge"
# Chunks gathered across documents before one embedding batch runs.
EMBED_BATCH_CHUNKS = 64
MAX_QUERY_CHARS = 2000
MAX_TOP_K = 50
MAX_ID_CHARS = 512
SEARCH_MODES = {
    knowledge_pb2.SEARCH_MODE_HYBRID: "hybrid",
    knowledge_pb2.SEARCH_MODE_VECTOR: "vector",
    knowledge_pb2.SEARCH_MODE_LEXICAL: "lexical",
}
DATABASE_ERRORS = (psycopg.OperationalError, psycopg_pool.PoolTimeout)
DOCUMENT_KINDS = frozenset(knowledge_pb2.DocumentKind.values())

log = logging.getLogger("quietline.knowledge")
T = TypeVar("T")


class InvalidDocument(ValueError):
    """A streamed document cannot be ingested; the message names the document and the fix."""


def content_hash(document: knowledge_pb2.Document, chunk_words: int, embedding_model: str) -> str:
    """sha256 of everything that shapes a document's stored version and chunks.

    The chunk size and the embedding model are included so that changing either re-indexes a
    document the next time it is ingested, instead of keeping stale chunks.
    """
    shape = [document.title, document.source_uri, document.content, document.effective_date, document.kind,
             chunk_words, embedding_model]
    return hashlib.sha256(json.dumps(shape, ensure_ascii=False).encode()).hexdigest()


def embedding_input(title: str, chunk: Chunk) -> str:
    """The text embedded for a chunk: its title and section give the passage its context."""
    return "\n".join(part for part in (title, chunk.section, chunk.text) if part)


def embedding_key(embedding_model: str, text: str) -> str:
    """Key under which a vector is stored and reused: the model and the exact text embedded."""
    return hashlib.sha256(f"{embedding_model}\n{text}".encode()).hexdigest()


def describe(document: knowledge_pb2.Document, position: int) -> str:
    """How an error message names a streamed document."""
    if document.document_id:
        return f"document {_printable(document.document_id[:MAX_ID_CHARS])} (#{position} in the stream)"
    if document.title:
        return f"document #{position} in the stream (title {_printable(document.title[:80])})"
    return f"document #{position} in the stream"


def _printable(text: str) -> str:
    """`text` quoted for an error message; control characters (a NUL) are shown escaped."""
    return f"'{text}'" if text.isprintable() else repr(text)


def _nul_fields(**values: str) -> list[str]:
    """The names of the fields whose text holds a NUL character, which PostgreSQL text cannot store."""
    return [name for name, value in values.items() if "\x00" in value]


@dataclass
class IngestCounts:
    """What one ingestion did, as reported by the Ingest RPC."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    chunks_written: int = 0
    chunks_embedded: int = 0
    removed: int = 0

    def to_proto(self) -> knowledge_pb2.IngestResponse:
        return knowledge_pb2.IngestResponse(
            documents_added=self.added, documents_updated=self.updated,
            documents_unchanged=self.unchanged, chunks_written=self.chunks_written,
            documents_removed=self.removed,
        )


@dataclass
class _Pending:
    document: StoredDocument
    chunks: list[Chunk]


@dataclass
class _Batch:
    documents: list[_Pending] = field(default_factory=list)
    chunk_count: int = 0


class Indexer:
    """Adds, replaces and removes documents in the store: hash check, chunking, batched embedding, writes."""

    def __init__(self, store: KnowledgeStore, embedder: Embedder, settings: KnowledgeSettings) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings

    def _validate(self, document: knowledge_pb2.Document, position: int) -> StoredDocument:
        name = describe(document, position)
        if not document.document_id.strip():
            raise InvalidDocument(
                f"{name} has no document_id: give every document a stable id "
                "(ingesting the same id again replaces it)"
            )
        if len(document.document_id) > MAX_ID_CHARS:
            raise InvalidDocument(f"{name} has an id of {len(document.document_id)} characters: use at most {MAX_ID_CHARS}")
        if not document.content.strip():
            raise InvalidDocument(f"{name} has empty content: send its Markdown or plain text")
        size = len(document.content.encode())
        if size > self.settings.max_document_bytes:
            # Exact bytes: a document just over the limit would read "21.0 MB, over the 21.0 MB limit" rounded.
            raise InvalidDocument(
                f"{name} has {size:,} bytes of text, over the limit of {self.settings.max_document_bytes:,} bytes "
                "(knowledge.max_document_bytes): split it or raise the limit"
            )
        if "\x00" in document.content:
            raise InvalidDocument(f"{name} contains NUL characters (binary data?): send its text")
        nul = _nul_fields(document_id=document.document_id, title=document.title, source_uri=document.source_uri,
                          collection=document.collection)
        if nul:
            raise InvalidDocument(f"{name} has NUL characters in its {', '.join(nul)}: send text without them")
        if document.kind not in DOCUMENT_KINDS:
            raise InvalidDocument(
                f"{name} has kind {document.kind}, which is not a DocumentKind: send "
                + " or ".join(f"{value} ({kind})" for kind, value in knowledge_pb2.DocumentKind.items())
            )
        try:
            effective = date.fromisoformat(document.effective_date) if document.effective_date else None
        except ValueError:
            raise InvalidDocument(
                f"{name} has effective_date '{document.effective_date[:40]}': use an ISO date, YYYY-MM-DD"
            ) from None
        return StoredDocument(
            collection=document.collection or self.settings.default_collection,
            document_id=document.document_id, title=document.title, source_uri=document.source_uri,
            content_hash=content_hash(document, self.settings.chunk_words, self.settings.embedding_model),
            content=document.content, effective_date=effective, kind=int(document.kind),
        )

    async def _embed(self, batch: _Batch, counts: IngestCounts) -> list[list[EmbeddedChunk]]:
        """Vectors for every chunk of the batch: stored ones reused, the rest embedded at once."""
        inputs = [[embedding_input(p.document.title, chunk) for chunk in p.chunks] for p in batch.documents]
        keys = [[embedding_key(self.settings.embedding_model, text) for text in texts] for texts in inputs]
        known = await self.store.stored_embeddings([key for row in keys for key in row])
        missing = list(dict.fromkeys(
            (key, text) for row_keys, row_texts in zip(keys, inputs) for key, text in zip(row_keys, row_texts)
            if key not in known
        ))
        vectors = await self.embedder.embed_passages([text for _, text in missing])
        known.update({key: vector for (key, _), vector in zip(missing, vectors)})
        counts.chunks_embedded += len(missing)
        return [
            [EmbeddedChunk(chunk, known[key], key) for chunk, key in zip(pending.chunks, row_keys)]
            for pending, row_keys in zip(batch.documents, keys)
        ]

    async def _flush(self, batch: _Batch, counts: IngestCounts) -> None:
        if not batch.documents:
            return
        embedded = await self._embed(batch, counts)
        for pending, chunks in zip(batch.documents, embedded):
            outcome = await self.store.write_document(pending.document, chunks)
            if outcome == "added":
                counts.added += 1
            elif outcome == "updated":
                counts.updated += 1
            else:
                counts.unchanged += 1
                continue
            counts.chunks_written += len(chunks)
        batch.documents.clear()
        batch.chunk_count = 0

    async def ingest(
        self, documents: AsyncIterable[knowledge_pb2.Document] | Iterable[knowledge_pb2.Document],
        options: knowledge_pb2.IngestOptions | None = None,
    ) -> IngestCounts:
        """Ingest a stream (or a list) of documents; each is written whole or not at all.

        `options` is read once the stream is consumed (the Ingest RPC fills it from the stream's first
        request). With `options.prune_source_prefix`, the documents of the streamed collections whose source_uri starts
        with it and that the stream did not carry are removed afterwards. Raises InvalidDocument at
        the first bad document or at an id the stream already carried; the documents before it are
        kept and nothing is pruned.
        """
        counts = IngestCounts()
        batch = _Batch()
        seen: dict[tuple[str, str], int] = {}
        position = 0
        async for document in _aiter(documents):
            position += 1
            try:
                stored = self._validate(document, position)
                key = (stored.collection, stored.document_id)
                if key in seen:
                    raise InvalidDocument(
                        f"{describe(document, position)} repeats the id of document #{seen[key]} in collection "
                        f"'{stored.collection}': give each document its own id"
                    )
            except InvalidDocument as err:
                await self._flush(batch, counts)
                raise InvalidDocument(f"{err}; {_kept(counts)}") from None
            seen[key] = position
            known = await self.store.content_hashes(stored.collection, [stored.document_id])
            if known.get(stored.document_id) == stored.content_hash:
                counts.unchanged += 1
                continue
            chunks = chunk_markdown(stored.content, self.settings.chunk_words)
            if not chunks:
                await self._flush(batch, counts)
                raise InvalidDocument(
                    f"{describe(document, position)} has no text outside headings: send its body text; "
                    + _kept(counts)
                )
            batch.documents.append(_Pending(stored, chunks))
            batch.chunk_count += len(chunks)
            if batch.chunk_count >= EMBED_BATCH_CHUNKS:
                await self._flush(batch, counts)
        await self._flush(batch, counts)
        prune_source_prefix = options.prune_source_prefix if options else ""
        if prune_source_prefix:
            for collection in sorted({collection for collection, _ in seen}):
                carried = {document_id for owner, document_id in seen if owner == collection}
                stale = [
                    document_id for document_id in await self.store.documents_under(collection, prune_source_prefix)
                    if document_id not in carried
                ]
                counts.removed += len(await self.store.remove_documents(collection, stale))
        return counts


def _kept(counts: IngestCounts) -> str:
    return (
        f"the documents before it were ingested ({counts.added} added, {counts.updated} updated, "
        f"{counts.unchanged} unchanged) and nothing was removed: fix this one and send the stream again "
        "(unchanged documents are skipped)"
    )


async def _aiter(items: AsyncIterable[T] | Iterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _timestamp(moment) -> str:
    return moment.isoformat() if moment else ""


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServicer):
    """Hybrid search with citations, streamed ingestion, versioned documents and collection stats."""

    def __init__(
        self, store: KnowledgeStore, embedder: Embedder, indexer: Indexer, settings: KnowledgeSettings
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.indexer = indexer
        self.settings = settings
        self.query_language = QueryLanguage()

    async def _abort_unavailable(self, context: grpc.aio.ServicerContext, rpc: str, err: Exception, fix: str):
        ERRORS.labels(SERVICE, "database").inc()
        log.error(f"{rpc} failed", extra={"error": type(err).__name__})
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"the knowledge database is unavailable: {fix}")

    async def _check_collections(self, collections: list[str], context: grpc.aio.ServicerContext) -> None:
        known = await self.store.collection_names()
        unknown = [name for name in collections if name not in known]
        if unknown:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no collection named {', '.join(repr(name) for name in unknown)}: the knowledge base holds "
                f"{', '.join(repr(name) for name in known) or 'no collections yet'}; ingest documents into it "
                "first (quietline kb ingest PATH --collection NAME) or search one of those",
            )

    async def Search(self, request: knowledge_pb2.SearchRequest, context: grpc.aio.ServicerContext):
        """The passages most relevant to `request.query`, best first."""
        query = request.query.strip()
        if not query:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "query is empty: send the caller's question as text"
            )
        if len(query) > MAX_QUERY_CHARS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"query has {len(query)} characters, more than {MAX_QUERY_CHARS}: send one question",
            )
        if "\x00" in query:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "query contains NUL characters: send the caller's question as text"
            )
        if request.mode not in SEARCH_MODES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"mode {request.mode} is not a SearchMode: send "
                + ", ".join(f"{value} ({name})" for name, value in knowledge_pb2.SearchMode.items()),
            )
        if request.top_k > MAX_TOP_K:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"top_k {request.top_k} is above {MAX_TOP_K}: ask for fewer passages"
            )
        foreign = self.query_language.foreign_language(query, self.settings.language)
        if foreign:
            language, probability = foreign
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"query is in {LANGUAGE_NAMES.get(language, language)} ({language}, p={probability:.2f}) but the "
                f"knowledge base is indexed in {LANGUAGE_NAMES[self.settings.language]}: ask in "
                f"{LANGUAGE_NAMES[self.settings.language]} or hand the caller to an agent who speaks the language",
            )
        top_k = request.top_k or self.settings.top_k
        collections = list(dict.fromkeys(request.collections)) or [self.settings.default_collection]
        searched = query if request.verbatim else rewrite_query(query)
        started = time.perf_counter()
        try:
            await self._check_collections(collections, context)
            embedding = await self.embedder.embed_query(searched)
            hits = await self.store.search(
                searched, embedding, collections, top_k, SEARCH_MODES[request.mode], request.distinct_documents
            )
        except DATABASE_ERRORS as err:
            await self._abort_unavailable(context, "search", err, "retry, and check PostgreSQL")
        elapsed = time.perf_counter() - started
        STAGE_LATENCY.labels(SERVICE, "search").observe(elapsed)
        log.debug(
            "search",
            extra={"call_id": request.call.call_id, "turn": request.call.turn, "passages": len(hits),
                   "search_ms": round(elapsed * 1000, 1)},
        )
        passages = []
        for hit in hits:
            snippet = best_snippet(searched, hit.text, hit.start_char)
            passages.append(knowledge_pb2.Passage(
                document_id=hit.document_id, title=hit.title, section=hit.section, text=hit.text,
                score=hit.score, collection=hit.collection, start_char=hit.start_char, end_char=hit.end_char,
                source_uri=hit.source_uri, version=hit.version, effective_date=hit.effective_date,
                kind=hit.kind, snippet=snippet.text, snippet_start=snippet.start_char,
                snippet_end=snippet.end_char, chunk_hash=hit.chunk_hash,
            ))
        return knowledge_pb2.SearchResponse(passages=passages)

    async def Ingest(
        self, request_iterator: AsyncIterator[knowledge_pb2.IngestRequest], context: grpc.aio.ServicerContext
    ):
        """Add or replace the streamed documents; unchanged ones cost nothing."""
        started = time.perf_counter()
        options = knowledge_pb2.IngestOptions()
        first = True

        async def documents():
            nonlocal first
            async for request in request_iterator:
                if first:
                    options.CopyFrom(request.options)
                    first = False
                if request.HasField("document"):
                    yield request.document

        try:
            counts = await self.indexer.ingest(documents(), options)
        except InvalidDocument as err:
            ERRORS.labels(SERVICE, "invalid_document").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except DATABASE_ERRORS as err:
            await self._abort_unavailable(
                context, "ingest", err,
                "documents written before the failure are kept whole and nothing was removed; send the stream "
                "again when PostgreSQL is back (unchanged documents are skipped)",
            )
        log.info(
            "ingested",
            extra={"added": counts.added, "updated": counts.updated, "unchanged": counts.unchanged,
                   "removed": counts.removed, "chunks_written": counts.chunks_written,
                   "chunks_embedded": counts.chunks_embedded,
                   "ingest_s": round(time.perf_counter() - started, 3)},
        )
        return counts.to_proto()

    async def RemoveDocuments(
        self, request: knowledge_pb2.RemoveDocumentsRequest, context: grpc.aio.ServicerContext
    ):
        """Take documents out of search; their versions stay resolvable."""
        collection = request.collection or self.settings.default_collection
        if any("\x00" in document_id for document_id in request.document_ids):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "document_ids hold NUL characters: send the ids as ingested"
            )
        try:
            await self._check_collections([collection], context)
            removed = await self.store.remove_documents(collection, list(request.document_ids))
        except DATABASE_ERRORS as err:
            await self._abort_unavailable(context, "remove", err, "nothing was removed; retry")
        log.info("removed", extra={"collection": collection, "removed": len(removed)})
        return knowledge_pb2.RemoveDocumentsResponse(documents_removed=len(removed))

    async def GetDocument(self, request: knowledge_pb2.GetDocumentRequest, context: grpc.aio.ServicerContext):
        """A document at a version (0: the latest), e.g. to resolve a citation."""
        collection = request.collection or self.settings.default_collection
        nul = _nul_fields(collection=request.collection, document_id=request.document_id)
        if nul:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{' and '.join(nul)} hold NUL characters: send the citation's collection and document id as given",
            )
        try:
            record = await self.store.document_version(collection, request.document_id, request.version)
        except DATABASE_ERRORS as err:
            await self._abort_unavailable(context, "get document", err, "retry")
        if record is None:
            which = f"version {request.version} of " if request.version else ""
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"{which}document '{request.document_id}' is not in collection '{collection}': check the "
                "citation's collection, document id and version",
            )
        stored = record.document
        return knowledge_pb2.DocumentVersion(
            document=knowledge_pb2.Document(
                document_id=stored.document_id, title=stored.title, content=stored.content,
                source_uri=stored.source_uri, collection=stored.collection,
                effective_date=stored.effective_date.isoformat() if stored.effective_date else "",
                kind=stored.kind,
            ),
            version=record.version, current=record.superseded_at is None,
            created_at=_timestamp(record.created_at), superseded_at=_timestamp(record.superseded_at),
            removed=record.removed,
        )

    async def Stats(self, request: knowledge_pb2.StatsRequest, context: grpc.aio.ServicerContext):
        """Documents, chunks and versions per collection."""
        try:
            rows = await self.store.collection_counts()
        except DATABASE_ERRORS as err:
            await self._abort_unavailable(context, "stats", err, "retry")
        return knowledge_pb2.StatsResponse(
            collections=[
                knowledge_pb2.CollectionStats(
                    collection=row.collection, documents=row.documents, chunks=row.chunks, versions=row.versions,
                    removed_documents=row.removed_documents, last_ingested_at=_timestamp(row.last_ingested_at),
                )
                for row in rows
            ],
            embedding_model=self.settings.embedding_model, chunk_words=self.settings.chunk_words,
        )

"""The Knowledge gRPC servicer (Search, Ingest) and the Indexer that turns documents into chunks.

Ingest is streamed: documents are checked against their stored content hash, unchanged ones cost one
lookup, and the rest are chunked and embedded in batches across documents, then each is written in
its own transaction. Search embeds the query and fuses vector and full-text rankings in PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import psycopg
import psycopg_pool

from quietline.v1 import knowledge_pb2, knowledge_pb2_grpc
from services.kit.config import KnowledgeSettings
from services.kit.metrics import ERRORS, STAGE_LATENCY
from services.knowledge.chunking import Chunk, chunk_markdown
from services.knowledge.embedder import Embedder
from services.knowledge.store import KnowledgeStore, StoredDocument

SERVICE = "knowledge"
# Chunks gathered across documents before one embedding batch runs.
EMBED_BATCH_CHUNKS = 64
MAX_QUERY_CHARS = 2000
MAX_TOP_K = 50

log = logging.getLogger("quietline.knowledge")
T = TypeVar("T")


class InvalidDocument(ValueError):
    """A streamed document cannot be ingested; the message names the document and the fix."""


def content_hash(document: knowledge_pb2.Document, chunk_words: int, embedding_model: str) -> str:
    """sha256 of everything that shapes a document's stored chunks.

    The chunk size and the embedding model are included so that changing either re-indexes a
    document the next time it is ingested, instead of keeping stale chunks.
    """
    shape = [document.title, document.source_uri, document.content, chunk_words, embedding_model]
    return hashlib.sha256(json.dumps(shape, ensure_ascii=False).encode()).hexdigest()


def embedding_input(title: str, chunk: Chunk) -> str:
    """The text embedded for a chunk: its title and section give the passage its context."""
    return "\n".join(part for part in (title, chunk.section, chunk.text) if part)


def describe(document: knowledge_pb2.Document, position: int) -> str:
    """How an error message names a streamed document."""
    if document.document_id:
        return f"document '{document.document_id}' (#{position} in the stream)"
    if document.title:
        return f"document #{position} in the stream (title '{document.title[:80]}')"
    return f"document #{position} in the stream"


@dataclass
class IngestCounts:
    """What one ingestion did, as reported by the Ingest RPC."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    chunks_written: int = 0

    def to_proto(self) -> knowledge_pb2.IngestResponse:
        return knowledge_pb2.IngestResponse(
            documents_added=self.added, documents_updated=self.updated,
            documents_unchanged=self.unchanged, chunks_written=self.chunks_written,
        )


@dataclass
class _Pending:
    document: StoredDocument
    chunks: list[Chunk]


@dataclass
class _Batch:
    documents: list[_Pending] = field(default_factory=list)
    keys: set[tuple[str, str]] = field(default_factory=set)
    chunk_count: int = 0


class Indexer:
    """Adds and replaces documents in the store: hash check, chunking, batched embedding, writes."""

    def __init__(self, store: KnowledgeStore, embedder: Embedder, settings: KnowledgeSettings) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings

    def _validate(self, document: knowledge_pb2.Document, position: int) -> StoredDocument:
        if not document.document_id.strip():
            raise InvalidDocument(
                f"{describe(document, position)} has no document_id: give every document a stable id "
                "(ingesting the same id again replaces it)"
            )
        if not document.content.strip():
            raise InvalidDocument(
                f"{describe(document, position)} has empty content: send its Markdown or plain text"
            )
        return StoredDocument(
            collection=document.collection or self.settings.default_collection,
            document_id=document.document_id, title=document.title, source_uri=document.source_uri,
            content_hash=content_hash(document, self.settings.chunk_words, self.settings.embedding_model),
            content=document.content,
        )

    async def _flush(self, batch: _Batch, counts: IngestCounts) -> None:
        texts = [embedding_input(p.document.title, chunk) for p in batch.documents for chunk in p.chunks]
        vectors = await self.embedder.embed_passages(texts)
        offset = 0
        for pending in batch.documents:
            count = len(pending.chunks)
            outcome = await self.store.write_document(
                pending.document, pending.chunks, vectors[offset : offset + count]
            )
            offset += count
            if outcome == "added":
                counts.added += 1
            elif outcome == "updated":
                counts.updated += 1
            else:
                counts.unchanged += 1
                continue
            counts.chunks_written += count
        batch.documents.clear()
        batch.keys.clear()
        batch.chunk_count = 0

    async def ingest(
        self, documents: AsyncIterable[knowledge_pb2.Document] | Iterable[knowledge_pb2.Document]
    ) -> IngestCounts:
        """Ingest a stream (or a list) of documents; each is written whole or not at all.

        Raises InvalidDocument at the first bad document; the documents before it are kept.
        """
        counts = IngestCounts()
        batch = _Batch()
        position = 0
        async for document in _aiter(documents):
            position += 1
            try:
                stored = self._validate(document, position)
            except InvalidDocument as err:
                await self._flush(batch, counts)
                raise InvalidDocument(f"{err}; {_kept(counts)}") from None
            key = (stored.collection, stored.document_id)
            if key in batch.keys:
                # The same id twice in one stream: the first must be stored before the second is compared.
                await self._flush(batch, counts)
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
            batch.keys.add(key)
            batch.chunk_count += len(chunks)
            if batch.chunk_count >= EMBED_BATCH_CHUNKS:
                await self._flush(batch, counts)
        await self._flush(batch, counts)
        return counts


def _kept(counts: IngestCounts) -> str:
    return (
        f"the documents before it were ingested ({counts.added} added, {counts.updated} updated, "
        f"{counts.unchanged} unchanged): fix this one and send it and the rest again"
    )


async def _aiter(items: AsyncIterable[T] | Iterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServicer):
    """Hybrid search with citations, and streamed ingestion, over the PostgreSQL knowledge base."""

    def __init__(
        self, store: KnowledgeStore, embedder: Embedder, indexer: Indexer, settings: KnowledgeSettings
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.indexer = indexer
        self.settings = settings

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
        if request.top_k > MAX_TOP_K:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"top_k {request.top_k} is above {MAX_TOP_K}: ask for fewer passages"
            )
        top_k = request.top_k or self.settings.top_k
        collections = list(request.collections) or [self.settings.default_collection]
        started = time.perf_counter()
        try:
            embedding = await self.embedder.embed_query(query)
            hits = await self.store.search(query, embedding, collections, top_k)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as err:
            ERRORS.labels(SERVICE, "database").inc()
            log.error("search failed", extra={"call_id": request.call.call_id, "error": type(err).__name__})
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the knowledge database is unavailable: retry, and check PostgreSQL"
            )
        elapsed = time.perf_counter() - started
        STAGE_LATENCY.labels(SERVICE, "search").observe(elapsed)
        log.debug(
            "search",
            extra={"call_id": request.call.call_id, "turn": request.call.turn, "passages": len(hits),
                   "search_ms": round(elapsed * 1000, 1)},
        )
        return knowledge_pb2.SearchResponse(passages=[
            knowledge_pb2.Passage(
                document_id=hit.document_id, title=hit.title, section=hit.section, text=hit.text,
                score=hit.score, collection=hit.collection, start_char=hit.start_char,
                end_char=hit.end_char, source_uri=hit.source_uri,
            )
            for hit in hits
        ])

    async def Ingest(
        self, request_iterator: AsyncIterator[knowledge_pb2.IngestRequest], context: grpc.aio.ServicerContext
    ):
        """Add or replace the streamed documents; unchanged ones cost nothing."""
        started = time.perf_counter()

        async def documents():
            async for request in request_iterator:
                yield request.document

        try:
            counts = await self.indexer.ingest(documents())
        except InvalidDocument as err:
            ERRORS.labels(SERVICE, "invalid_document").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as err:
            ERRORS.labels(SERVICE, "database").inc()
            log.error("ingest failed", extra={"error": type(err).__name__})
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the knowledge database is unavailable: documents written before the failure are kept whole; "
                "send the stream again when PostgreSQL is back (unchanged documents are skipped)",
            )
        log.info(
            "ingested",
            extra={"added": counts.added, "updated": counts.updated, "unchanged": counts.unchanged,
                   "chunks_written": counts.chunks_written, "ingest_s": round(time.perf_counter() - started, 3)},
        )
        return counts.to_proto()

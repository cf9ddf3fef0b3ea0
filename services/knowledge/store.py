"""PostgreSQL access for the knowledge service: migrations, document upserts and hybrid search.

Tables live in their own schema, `knowledge`, so their names (`documents`, `chunks`,
`schema_migrations`) never collide with another service's in a shared database. The `vector`
extension is created in `public`. Connections come from a psycopg_pool pool with pgvector's adapter
registered, so numpy arrays go in and out as `vector` values.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector_async
from psycopg_pool import AsyncConnectionPool

from services.kit.database import CONNECT_TIMEOUT_S, migrate
from services.knowledge.chunking import Chunk

log = logging.getLogger("quietline.knowledge.store")

SCHEMA = "knowledge"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Candidates taken from each of the vector and the full-text ranking before fusion; the HNSW scan
# offers at least as many (hnsw.ef_search), and iterative scans keep going when a collection
# filter drops neighbours.
MIN_CANDIDATES = 50
MAX_CANDIDATES = 200
# Reciprocal rank fusion constant (Cormack et al. 2009): score = sum over rankings of 1 / (k + rank).
RRF_K = 60
# ts_rank weights of a match in the body (D), -, section (B) and title (A). PostgreSQL's default
# {0.1, 0.2, 0.4, 1.0} lets any title word outweigh the body: on the bank KB's caller questions that
# cost a third of full-text recall@10 (0.23 -> 0.15).
TS_RANK_WEIGHTS = "{0.5, 0.5, 0.7, 1.0}"
# Full-text candidates are the chunks holding the query's rarest words, taken rarest first while
# their summed chunk counts stay within this budget (at least the rarest word): the scan stays
# bounded however large a collection grows (100k chunks: hybrid p50 686 -> 40 ms), while on the
# bank KB (1.7k chunks) every word fits and recall is unchanged. The other query words still add to
# the score of the chunks selected.
POSTING_BUDGET = 5000

# The query's distinct lexemes (stemmed by the index's configuration) with their inverse document
# frequency in the searched collections (BM25's idf, from lexeme_chunks).
_QUERY_TERMS = """
    SELECT q.lexeme, quote_literal(q.lexeme)::tsquery AS term,
           ln(1 + (total.chunks - coalesce(df.chunks, 0) + 0.5) / (coalesce(df.chunks, 0) + 0.5)) AS idf,
           coalesce(df.chunks, 0) > 0 AND (
               sum(df.chunks) OVER (ORDER BY df.chunks, q.lexeme ROWS UNBOUNDED PRECEDING) <= %(posting_budget)s
               OR row_number() OVER (ORDER BY coalesce(df.chunks, 0) = 0, df.chunks, q.lexeme) = 1
           ) AS selecting
    FROM (
        SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', %(query)s))
        WHERE position(E'\\\\' IN lexeme) = 0
    ) AS q
    CROSS JOIN (
        SELECT greatest(sum(chunk_count), 1) AS chunks FROM collections WHERE name = ANY(%(collections)s)
    ) AS total
    LEFT JOIN LATERAL (
        SELECT sum(l.chunks) AS chunks FROM lexeme_chunks AS l
        WHERE l.collection = ANY(%(collections)s) AND l.lexeme = q.lexeme
    ) AS df ON true
"""
_SEMANTIC_RANKING = """
    SELECT id, row_number() OVER (ORDER BY distance, id) AS rank
    FROM (
        SELECT id, embedding <=> %(embedding)s AS distance
        FROM chunks
        WHERE collection = ANY(%(collections)s)
        ORDER BY distance
        LIMIT %(candidates)s
    ) AS nearest
"""
# The lexical ranking matches ANY selecting query word (an OR query: a caller's sentence has words no
# passage shares, and an AND of all of them would match nothing), then scores each match as the sum
# over the query words it holds of idf x ts_rank (a title match weighs 2x, a section match 1.4x the body's).
_LEXICAL_RANKING = f"""
    SELECT id, row_number() OVER (ORDER BY relevance DESC, id) AS rank
    FROM (
        SELECT m.id, (
            SELECT sum(t.idf * ts_rank('{TS_RANK_WEIGHTS}', m.tsv, t.term)) FROM query_terms AS t
            WHERE m.tsv @@ t.term
        ) AS relevance
        FROM (
            SELECT c.id, c.tsv FROM chunks AS c
            WHERE c.collection = ANY(%(collections)s) AND c.tsv @@ (
                SELECT coalesce(string_agg(quote_literal(lexeme), ' | '), '')::tsquery FROM query_terms WHERE selecting
            )
        ) AS m
        ORDER BY relevance DESC
        LIMIT %(candidates)s
    ) AS matched
"""
_RANKINGS = {
    "hybrid": f"SELECT * FROM ({_SEMANTIC_RANKING}) AS s UNION ALL SELECT * FROM ({_LEXICAL_RANKING}) AS l",
    "vector": _SEMANTIC_RANKING,
    "lexical": _LEXICAL_RANKING,
}
# Fused score per chunk, then (when distinct) only each document's best chunk, best first.
_SEARCH_TEMPLATE = """
WITH query_terms AS ({query_terms}),
ranked AS ({ranking}),
fused AS (
    SELECT id, sum(1.0 / (%(rrf_k)s + rank)) AS score FROM ranked GROUP BY id
),
scored AS (
    SELECT c.id, c.collection, c.document_id, c.section, c.text, c.start_char, c.end_char, c.version,
           c.chunk_hash, f.score,
           row_number() OVER (PARTITION BY c.collection, c.document_id ORDER BY f.score DESC, c.id) AS in_document
    FROM fused AS f JOIN chunks AS c ON c.id = f.id
)
SELECT s.document_id, d.title, s.section, s.text, s.score::float8, s.collection, s.start_char, s.end_char,
       d.source_uri, s.version, coalesce(d.effective_date::text, ''), d.kind, s.chunk_hash
FROM scored AS s
JOIN documents AS d ON d.collection = s.collection AND d.document_id = s.document_id
WHERE NOT %(distinct)s OR s.in_document = 1
ORDER BY s.score DESC, s.id
LIMIT %(top_k)s
"""
SEARCH_SQL = {
    mode: _SEARCH_TEMPLATE.format(query_terms=_QUERY_TERMS, ranking=ranking) for mode, ranking in _RANKINGS.items()
}

_INSERT_VERSION = """
INSERT INTO document_versions
    (collection, document_id, version, title, source_uri, content_hash, content, effective_date, kind)
SELECT %(collection)s, %(document_id)s, coalesce(max(version), 0) + 1, %(title)s, %(source_uri)s,
       %(content_hash)s, %(content)s, %(effective_date)s, %(kind)s
FROM document_versions WHERE collection = %(collection)s AND document_id = %(document_id)s
RETURNING version
"""
_UPSERT_DOCUMENT = """
INSERT INTO documents (collection, document_id, title, source_uri, content_hash, version, effective_date, kind)
VALUES (%(collection)s, %(document_id)s, %(title)s, %(source_uri)s, %(content_hash)s, %(version)s,
        %(effective_date)s, %(kind)s)
ON CONFLICT (collection, document_id) DO UPDATE
SET title = EXCLUDED.title, source_uri = EXCLUDED.source_uri, content_hash = EXCLUDED.content_hash,
    version = EXCLUDED.version, effective_date = EXCLUDED.effective_date, kind = EXCLUDED.kind,
    updated_at = now()
"""
_INSERT_CHUNK = """
INSERT INTO chunks (collection, document_id, ordinal, title, section, text, start_char, end_char, embedding,
                    version, chunk_hash, embedding_key)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
# Lexeme statistics follow every chunk write and delete of a document, in the same transaction.
_COUNT_DOCUMENT_LEXEMES = """
    SELECT lexeme, count(*) AS chunks FROM chunks, unnest(tsv)
    WHERE collection = %(collection)s AND document_id = %(document_id)s GROUP BY lexeme ORDER BY lexeme
"""
_SUBTRACT_LEXEMES = f"""
UPDATE lexeme_chunks AS l SET chunks = l.chunks - d.chunks
FROM ({_COUNT_DOCUMENT_LEXEMES}) AS d
WHERE l.collection = %(collection)s AND l.lexeme = d.lexeme
"""
_ADD_LEXEMES = f"""
INSERT INTO lexeme_chunks (collection, lexeme, chunks)
SELECT %(collection)s, lexeme, chunks FROM ({_COUNT_DOCUMENT_LEXEMES}) AS d
ON CONFLICT (collection, lexeme) DO UPDATE SET chunks = lexeme_chunks.chunks + EXCLUDED.chunks
"""
_ADJUST_CHUNK_COUNT = """
UPDATE collections SET chunk_count = chunk_count + %(delta)s WHERE name = %(collection)s
"""
_SUBTRACT_CHUNK_COUNT = """
UPDATE collections
SET chunk_count = chunk_count
    - (SELECT count(*) FROM chunks WHERE collection = %(collection)s AND document_id = %(document_id)s)
WHERE name = %(collection)s
"""
# Writers of one collection take turns: its statistics rows are updated by every write.
_COLLECTION_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('knowledge collection/' || %s, 0))"

_CLOSE_CURRENT_VERSION = """
UPDATE document_versions SET superseded_at = now(), removed = %(removed)s
WHERE collection = %(collection)s AND document_id = %(document_id)s AND superseded_at IS NULL
"""
_STATS = """
SELECT c.name,
       (SELECT count(*) FROM documents AS d WHERE d.collection = c.name),
       (SELECT count(*) FROM chunks AS k WHERE k.collection = c.name),
       (SELECT count(*) FROM document_versions AS v WHERE v.collection = c.name),
       -- Documents removed and not ingested again since.
       (SELECT count(DISTINCT v.document_id) FROM document_versions AS v
        WHERE v.collection = c.name AND v.removed AND NOT EXISTS (
            SELECT 1 FROM documents AS d WHERE d.collection = v.collection AND d.document_id = v.document_id)),
       (SELECT max(created_at) FROM document_versions AS v WHERE v.collection = c.name)
FROM collections AS c ORDER BY c.name
"""


@dataclass(frozen=True)
class StoredDocument:
    """A document version as written to `document_versions` (and, while current, `documents`)."""

    collection: str
    document_id: str
    title: str
    source_uri: str
    content_hash: str
    content: str
    effective_date: date | None = None
    kind: int = 0


@dataclass(frozen=True)
class EmbeddedChunk:
    """A chunk ready to store: its place in the document, its vector and the key that vector is reused by."""

    chunk: Chunk
    embedding: np.ndarray
    embedding_key: str


@dataclass(frozen=True)
class SearchHit:
    """One passage found by `KnowledgeStore.search`, with its fused relevance score."""

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
    kind: int
    chunk_hash: str


@dataclass(frozen=True)
class VersionRecord:
    """One row of `document_versions`: what a citation of that version points into."""

    document: StoredDocument
    version: int
    created_at: datetime
    superseded_at: datetime | None
    removed: bool


@dataclass(frozen=True)
class CollectionCounts:
    """What one collection holds, for `quietline kb stats`."""

    collection: str
    documents: int
    chunks: int
    versions: int
    removed_documents: int
    last_ingested_at: datetime | None


def chunk_hash(text: str) -> str:
    """sha256 of a chunk's text, stored with it so a quoted passage can be checked."""
    return hashlib.sha256(text.encode()).hexdigest()


async def _configure_connection(conn: psycopg.AsyncConnection) -> None:
    await conn.execute(f"SET search_path TO {SCHEMA}, public")
    await register_vector_async(conn)
    # The HNSW scan must offer at least as many neighbours as a search takes as candidates.
    await conn.execute(f"SET hnsw.ef_search = {MAX_CANDIDATES}")
    try:
        # pgvector 0.8+: keep scanning the graph when the collection filter drops neighbours.
        await conn.execute("SET hnsw.iterative_scan = relaxed_order")
    except psycopg.Error:
        pass  # an older pgvector: searches still work, with fewer candidates in rare collections


class KnowledgeStore:
    """The knowledge base in PostgreSQL: open with `KnowledgeStore.open(dsn)`, close with `close()`."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str, max_connections: int = 4) -> KnowledgeStore:
        """Connect, apply pending migrations and open the connection pool.

        Raises DatabaseError (a ConfigError) when the database cannot be reached or migrated.
        """
        await migrate(dsn, SCHEMA, MIGRATIONS_DIR)
        pool = AsyncConnectionPool(
            dsn, min_size=1, max_size=max_connections, open=False, timeout=10.0,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            configure=_configure_connection, check=AsyncConnectionPool.check_connection,
            name="knowledge",
        )
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        return cls(pool)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.pool.close()

    async def count_documents(self, collection: str) -> int:
        """How many searchable documents `collection` holds."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute("SELECT count(*) FROM documents WHERE collection = %s", [collection])
            row = await cursor.fetchone()
        return int(row[0])

    async def collection_names(self) -> list[str]:
        """Every collection, by name."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute("SELECT name FROM collections ORDER BY name")
            return [row[0] for row in await cursor.fetchall()]

    async def content_hashes(self, collection: str, document_ids: Sequence[str]) -> dict[str, str]:
        """The stored content hash of each of `document_ids` that `collection` currently holds."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT document_id, content_hash FROM documents WHERE collection = %s AND document_id = ANY(%s)",
                [collection, list(document_ids)],
            )
            return {document_id: digest for document_id, digest in await cursor.fetchall()}

    async def stored_embeddings(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors already stored under any of `keys` (see EmbeddedChunk.embedding_key)."""
        if not keys:
            return {}
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT DISTINCT ON (embedding_key) embedding_key, embedding FROM chunks WHERE embedding_key = ANY(%s)",
                [list(set(keys))],
            )
            return {key: vector for key, vector in await cursor.fetchall()}

    async def write_document(self, document: StoredDocument, chunks: Sequence[EmbeddedChunk]) -> str:
        """Make `document` the current version of its id, with exactly `chunks`, in one transaction.

        The previous version stays in `document_versions` (closed by superseded_at) so its citations
        still resolve. Returns "added", "updated", or "unchanged" when the current version already
        has this content hash (another writer got there first); readers never see a half-indexed
        document.
        """
        key = {"collection": document.collection, "document_id": document.document_id}
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(_COLLECTION_LOCK, [document.collection])
            cursor = await conn.execute(
                "SELECT content_hash FROM documents WHERE collection = %s AND document_id = %s",
                [document.collection, document.document_id],
            )
            current = await cursor.fetchone()
            if current is not None and current[0] == document.content_hash:
                return "unchanged"
            await conn.execute(
                "INSERT INTO collections (name) VALUES (%s) ON CONFLICT DO NOTHING", [document.collection]
            )
            await conn.execute(_CLOSE_CURRENT_VERSION, {**asdict(document), "removed": False})
            cursor = await conn.execute(_INSERT_VERSION, asdict(document))
            (version,) = await cursor.fetchone()
            await conn.execute(_UPSERT_DOCUMENT, {**asdict(document), "version": version})
            await self._forget_chunks(conn, document.collection, document.document_id)
            await conn.execute(
                "DELETE FROM chunks WHERE collection = %s AND document_id = %s",
                [document.collection, document.document_id],
            )
            async with conn.cursor() as chunk_cursor:
                await chunk_cursor.executemany(_INSERT_CHUNK, [
                    (document.collection, document.document_id, item.chunk.ordinal, document.title,
                     item.chunk.section, item.chunk.text, item.chunk.start_char, item.chunk.end_char,
                     item.embedding, version, chunk_hash(item.chunk.text), item.embedding_key)
                    for item in chunks
                ])
            await conn.execute(_ADD_LEXEMES, key)
            await conn.execute(_ADJUST_CHUNK_COUNT, {**key, "delta": len(chunks)})
        return "updated" if current is not None else "added"

    @staticmethod
    async def _forget_chunks(conn: psycopg.AsyncConnection, collection: str, document_id: str) -> None:
        """Take a document's stored chunks out of the collection's statistics (before deleting them)."""
        key = {"collection": collection, "document_id": document_id}
        await conn.execute(_SUBTRACT_LEXEMES, key)
        await conn.execute(_SUBTRACT_CHUNK_COUNT, key)

    async def remove_documents(self, collection: str, document_ids: Sequence[str]) -> list[str]:
        """Take documents out of search (their versions stay resolvable); returns the ids removed."""
        removed: list[str] = []
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(_COLLECTION_LOCK, [collection])
            for document_id in sorted(set(document_ids)):
                await self._forget_chunks(conn, collection, document_id)
                cursor = await conn.execute(
                    "DELETE FROM documents WHERE collection = %s AND document_id = %s RETURNING document_id",
                    [collection, document_id],
                )
                if await cursor.fetchone() is None:
                    continue
                await conn.execute(
                    _CLOSE_CURRENT_VERSION, {"collection": collection, "document_id": document_id, "removed": True}
                )
                removed.append(document_id)
        return removed

    async def documents_under(self, collection: str, source_prefix: str) -> list[str]:
        """Ids of the current documents of `collection` whose source_uri starts with `source_prefix`."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT document_id FROM documents WHERE collection = %s AND starts_with(source_uri, %s)",
                [collection, source_prefix],
            )
            return [row[0] for row in await cursor.fetchall()]

    async def document_version(self, collection: str, document_id: str, version: int = 0) -> VersionRecord | None:
        """A document as stored at `version` (0: the latest version), or None if there is no such version."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """
                SELECT title, source_uri, content_hash, content, effective_date, kind, version, created_at,
                       superseded_at, removed
                FROM document_versions
                WHERE collection = %s AND document_id = %s AND (version = %s OR %s = 0)
                ORDER BY version DESC LIMIT 1
                """,
                [collection, document_id, version, version],
            )
            row = await cursor.fetchone()
        if row is None:
            return None
        title, source_uri, digest, content, effective, kind, number, created, superseded, removed = row
        document = StoredDocument(collection, document_id, title, source_uri, digest, content, effective, kind)
        return VersionRecord(document, number, created, superseded, removed)

    async def collection_counts(self) -> list[CollectionCounts]:
        """Documents, chunks and versions of every collection."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(_STATS)
            return [CollectionCounts(*row) for row in await cursor.fetchall()]

    async def search(
        self, query: str, embedding: np.ndarray, collections: Sequence[str], top_k: int,
        mode: str = "hybrid", distinct_documents: bool = False,
    ) -> list[SearchHit]:
        """The `top_k` best chunks of `collections` by `mode` ("hybrid": reciprocal rank fusion of the
        vector and the full-text ranking; "vector"; "lexical"), at most one per document when
        `distinct_documents`."""
        # Distinct documents need more candidates: a document often has several good chunks.
        wanted = top_k * (4 if distinct_documents else 2)
        parameters = {
            "query": query, "embedding": embedding, "collections": list(collections), "top_k": top_k,
            "candidates": min(MAX_CANDIDATES, max(MIN_CANDIDATES, wanted)), "rrf_k": RRF_K,
            "distinct": distinct_documents, "posting_budget": POSTING_BUDGET,
        }
        async with self.pool.connection() as conn:
            cursor = await conn.execute(SEARCH_SQL[mode], parameters)
            rows = await cursor.fetchall()
        return [SearchHit(*row) for row in rows]

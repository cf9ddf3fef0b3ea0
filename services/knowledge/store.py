"""PostgreSQL access for the knowledge service: migrations, document upserts and hybrid search.

Tables live in their own schema, `knowledge`, so their names (`documents`, `chunks`,
`schema_migrations`) never collide with another service's in a shared database. The `vector`
extension is created in `public`. Connections come from a psycopg_pool pool with pgvector's adapter
registered, so numpy arrays go in and out as `vector` values.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql
from pgvector.psycopg import register_vector_async
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from services.kit.config import ConfigError
from services.knowledge.chunking import Chunk

log = logging.getLogger("quietline.knowledge.store")

SCHEMA = "knowledge"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Every knowledge process takes this advisory lock while migrating, so two starting at once
# apply each migration exactly once.
MIGRATION_LOCK = "quietline.knowledge.migrations"
CONNECT_TIMEOUT_S = 10
# Candidates taken from each of the vector and the full-text ranking before fusion.
MIN_CANDIDATES = 50
MAX_CANDIDATES = 100
# Reciprocal rank fusion constant (Cormack et al. 2009): score = sum over rankings of 1 / (k + rank).
RRF_K = 60

SEARCH_SQL = """
WITH semantic AS (
    SELECT id, row_number() OVER (ORDER BY distance) AS rank
    FROM (
        SELECT id, embedding <=> %(embedding)s AS distance
        FROM chunks
        WHERE collection = ANY(%(collections)s)
        ORDER BY distance
        LIMIT %(candidates)s
    ) AS nearest
),
lexical AS (
    SELECT id, row_number() OVER (ORDER BY relevance DESC, id) AS rank
    FROM (
        SELECT id, ts_rank(tsv, query) AS relevance
        FROM chunks, websearch_to_tsquery('english', %(query)s) AS query
        WHERE collection = ANY(%(collections)s) AND tsv @@ query
        ORDER BY relevance DESC
        LIMIT %(candidates)s
    ) AS matched
),
fused AS (
    SELECT id, sum(1.0 / (%(rrf_k)s + rank)) AS score
    FROM (SELECT id, rank FROM semantic UNION ALL SELECT id, rank FROM lexical) AS ranked
    GROUP BY id
)
SELECT c.document_id, d.title, c.section, c.text, f.score::float8, c.collection,
       c.start_char, c.end_char, d.source_uri
FROM fused AS f
JOIN chunks AS c ON c.id = f.id
JOIN documents AS d ON d.collection = c.collection AND d.document_id = c.document_id
ORDER BY f.score DESC, c.id
LIMIT %(top_k)s
"""

UPSERT_DOCUMENT_SQL = """
INSERT INTO documents (collection, document_id, title, source_uri, content_hash, content)
VALUES (%(collection)s, %(document_id)s, %(title)s, %(source_uri)s, %(content_hash)s, %(content)s)
ON CONFLICT (collection, document_id) DO UPDATE
SET title = EXCLUDED.title, source_uri = EXCLUDED.source_uri, content_hash = EXCLUDED.content_hash,
    content = EXCLUDED.content, version = documents.version + 1, updated_at = now()
WHERE documents.content_hash <> EXCLUDED.content_hash
RETURNING version
"""

INSERT_CHUNK_SQL = """
INSERT INTO chunks (collection, document_id, ordinal, title, section, text, start_char, end_char, embedding)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


class StoreError(ConfigError):
    """The knowledge database cannot be used at start; the message names the problem and the fix."""


@dataclass(frozen=True)
class StoredDocument:
    """A document as written to the `documents` table."""

    collection: str
    document_id: str
    title: str
    source_uri: str
    content_hash: str
    content: str


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


def describe_dsn(dsn: str) -> str:
    """The DSN's host, port, database and user, without the password, for error messages."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparseable DSN)"
    return " ".join(f"{key}={parts[key]}" for key in ("host", "port", "dbname", "user") if parts.get(key))


async def apply_migrations(conn: psycopg.AsyncConnection, schema: str = SCHEMA) -> list[str]:
    """Apply the migrations in `migrations/` not yet recorded in `<schema>.schema_migrations`.

    Each runs in its own transaction, in file-name order, under an advisory lock, with `schema`
    first on the search path (the migrations name no schema). `conn` must be in autocommit mode.
    Returns the versions applied now.
    """
    applied_now: list[str] = []
    name = sql.Identifier(schema)
    await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [MIGRATION_LOCK])
    try:
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
        await conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(name))
        cursor = await conn.execute(sql.SQL("SELECT version FROM {}.schema_migrations").format(name))
        applied = {row[0] for row in await cursor.fetchall()}
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            if path.stem in applied:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(sql.SQL("SET LOCAL search_path TO {}, public").format(name))
                    await conn.execute(path.read_text())
                    await conn.execute(
                        sql.SQL("INSERT INTO {}.schema_migrations (version) VALUES (%s)").format(name), [path.stem]
                    )
            except psycopg.Error as err:
                raise StoreError(
                    f"knowledge: database migration {path.name} failed ({err}); nothing of it was applied: "
                    "fix the database (is the pgvector extension installed, and may this user create it?) "
                    "and start again"
                ) from None
            applied_now.append(path.stem)
            log.info("migration applied", extra={"version": path.stem})
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [MIGRATION_LOCK])
    return applied_now


async def _configure_connection(conn: psycopg.AsyncConnection) -> None:
    await conn.execute(f"SET search_path TO {SCHEMA}, public")
    await register_vector_async(conn)
    # The HNSW scan must offer at least as many neighbours as a search asks for.
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

        Raises StoreError (a ConfigError) when the database cannot be reached or migrated.
        """
        if not dsn.strip():
            raise StoreError(
                "knowledge: database.dsn is empty: set QUIETLINE_DATABASE__DSN (quietline up does) or "
                "database.dsn in the config file to a PostgreSQL 16+ with pgvector"
            )
        try:
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            ) as conn:
                await apply_migrations(conn)
        except psycopg.OperationalError as err:
            raise StoreError(
                f"knowledge: cannot connect to PostgreSQL at {describe_dsn(dsn)} ({str(err).strip()}): "
                "start the database or correct database.dsn"
            ) from None
        except psycopg.ProgrammingError as err:
            raise StoreError(
                f"knowledge: database.dsn is not a valid connection string ({str(err).strip()}): correct it"
            ) from None
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
        """How many documents `collection` holds."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute("SELECT count(*) FROM documents WHERE collection = %s", [collection])
            row = await cursor.fetchone()
        return int(row[0])

    async def content_hashes(self, collection: str, document_ids: Sequence[str]) -> dict[str, str]:
        """The stored content hash of each of `document_ids` that `collection` already holds."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT document_id, content_hash FROM documents WHERE collection = %s AND document_id = ANY(%s)",
                [collection, list(document_ids)],
            )
            return {document_id: digest for document_id, digest in await cursor.fetchall()}

    async def write_document(self, document: StoredDocument, chunks: Sequence[Chunk], embeddings: np.ndarray) -> str:
        """Insert or replace a document and all its chunks in one transaction.

        Returns "added", "updated", or "unchanged" when the stored hash already equals the document's
        (another writer got there first); readers never see a half-indexed document.
        """
        if len(chunks) != len(embeddings):
            raise ValueError(f"{len(chunks)} chunks but {len(embeddings)} embeddings")
        async with self.pool.connection() as conn, conn.transaction():
            # The upsert locks the document's row, so concurrent writers of one document take turns.
            cursor = await conn.execute(UPSERT_DOCUMENT_SQL, asdict(document))
            row = await cursor.fetchone()
            if row is None:
                return "unchanged"
            await conn.execute(
                "DELETE FROM chunks WHERE collection = %s AND document_id = %s",
                [document.collection, document.document_id],
            )
            async with conn.cursor() as chunk_cursor:
                await chunk_cursor.executemany(INSERT_CHUNK_SQL, [
                    (document.collection, document.document_id, chunk.ordinal, document.title, chunk.section,
                     chunk.text, chunk.start_char, chunk.end_char, vector)
                    for chunk, vector in zip(chunks, embeddings, strict=True)
                ])
        return "added" if row[0] == 1 else "updated"

    async def search(
        self, query: str, embedding: np.ndarray, collections: Sequence[str], top_k: int
    ) -> list[SearchHit]:
        """The `top_k` chunks of `collections` best by reciprocal rank fusion of vector and full-text rank."""
        parameters = {
            "query": query, "embedding": embedding, "collections": list(collections), "top_k": top_k,
            "candidates": min(MAX_CANDIDATES, max(MIN_CANDIDATES, 2 * top_k)), "rrf_k": RRF_K,
        }
        async with self.pool.connection() as conn:
            cursor = await conn.execute(SEARCH_SQL, parameters)
            rows = await cursor.fetchall()
        return [SearchHit(*row) for row in rows]

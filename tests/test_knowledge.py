"""The knowledge service, run as a real process against the real embedded PostgreSQL + pgvector.

Covers the seeded sample knowledge base, streamed ingestion of part of the shared banking knowledge
base (../shared/data/kb/banking), hybrid search with citations, change detection on re-ingest,
errors, and migrations started by two processes at once.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import psycopg
import pytest
import yaml

from conftest import REPO_ROOT, start_service
from quietline.v1 import knowledge_pb2, knowledge_pb2_grpc
from services.kit.config import KnowledgeSettings
from services.kit.offline import OFFLINE_ENVIRONMENT
from services.knowledge.chunking import chunk_markdown
from services.knowledge.documents import read_document_folder
from services.knowledge.store import MIGRATIONS_DIR, apply_migrations

SAMPLE_KB = REPO_ROOT / "services" / "knowledge" / "sample_kb"
# Every 11th of the 698 shared banking documents: 60 documents across all the product families.
BANKING_STRIDE = 11
BANKING_COUNT = 60
CHUNK_WORDS = KnowledgeSettings().chunk_words
RPC_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def knowledge(service_config: Path, database_dsn: str):
    service = start_service("knowledge", service_config, extra_env={"QUIETLINE_DATABASE__DSN": database_dsn})
    yield service
    service.stop()


@pytest.fixture(scope="module")
def stub(knowledge) -> knowledge_pb2_grpc.KnowledgeStub:
    with grpc.insecure_channel(knowledge.target) as channel:
        yield knowledge_pb2_grpc.KnowledgeStub(channel)


@pytest.fixture(scope="module")
def banking_collection() -> str:
    # A fresh collection per run, so counts are exact even when the database outlives the test.
    return f"banking-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def banking_documents(shared_data: Path, banking_collection: str) -> list[knowledge_pb2.Document]:
    every = list(read_document_folder(shared_data / "kb" / "banking" / "documents", banking_collection))
    chosen = every[::BANKING_STRIDE][:BANKING_COUNT]
    assert len(chosen) == BANKING_COUNT
    return chosen


def ingest(stub, documents) -> knowledge_pb2.IngestResponse:
    return stub.Ingest((knowledge_pb2.IngestRequest(document=d) for d in documents), timeout=120)


def search(stub, query: str, collections=(), top_k: int = 0) -> list[knowledge_pb2.Passage]:
    request = knowledge_pb2.SearchRequest(query=query, top_k=top_k, collections=list(collections))
    return list(stub.Search(request, timeout=RPC_TIMEOUT_S).passages)


@pytest.fixture(scope="module")
def first_ingest(stub, banking_documents) -> knowledge_pb2.IngestResponse:
    return ingest(stub, banking_documents)


def stored_chunks(dsn: str, collection: str, document_id: str) -> list[tuple[int, int, int, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT id, start_char, end_char, text FROM knowledge.chunks "
            "WHERE collection = %s AND document_id = %s ORDER BY ordinal",
            [collection, document_id],
        ).fetchall()


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("I lost my debit card, what should I do?", "lost-or-stolen-card"),
        ("Can I pause my mortgage payments for a few months?", "mortgage-payment-holiday"),
        ("Someone phoned and asked for my PIN, is that you?", "fraud-and-phishing-warning"),
        ("Is there wheelchair access at your branches?", "branch-accessibility"),
    ],
)
def test_sample_knowledge_base_is_seeded_and_searchable(stub, question, expected):
    passages = search(stub, question)
    assert passages, "the seeded default collection returned nothing"
    assert len(passages) <= KnowledgeSettings().top_k
    best = passages[0]
    assert best.document_id == expected, [(p.document_id, p.section, p.score) for p in passages]
    assert best.collection == "default"
    source = SAMPLE_KB / f"{expected}.md"
    content = source.read_text()
    assert best.title == content.splitlines()[0].removeprefix("# ")
    # The citation points at exactly the passage's text inside the document.
    assert content[best.start_char : best.end_char] == best.text
    assert best.source_uri == source.resolve().as_uri()
    assert best.score > 0 and [p.score for p in passages] == sorted((p.score for p in passages), reverse=True)


def test_ingested_documents_are_found_by_their_titles(stub, first_ingest, banking_documents, banking_collection):
    expected_chunks = sum(len(chunk_markdown(d.content, CHUNK_WORDS)) for d in banking_documents)
    assert first_ingest.documents_added == BANKING_COUNT
    assert (first_ingest.documents_updated, first_ingest.documents_unchanged) == (0, 0)
    assert first_ingest.chunks_written == expected_chunks

    found = []
    for document in banking_documents:
        passages = search(stub, document.title, [banking_collection], top_k=5)
        assert {p.collection for p in passages} == {banking_collection}
        found.append(document.document_id in {p.document_id for p in passages})
    # Titles repeat across product families ("Business Gold Account: Fees" ...), so a few may lose
    # their top-5 place to siblings; nearly all must be found.
    recall = sum(found) / len(found)
    assert recall >= 0.9, f"title recall@5 {recall:.2f}"
    assert found[7], banking_documents[7].title


def test_reingest_skips_unchanged_and_replaces_changed(
    stub, first_ingest, banking_documents, banking_collection, database_dsn
):
    again = ingest(stub, banking_documents)
    assert (again.documents_added, again.documents_updated) == (0, 0)
    assert again.documents_unchanged == BANKING_COUNT
    assert again.chunks_written == 0

    target = banking_documents[3]
    old_chunks = stored_chunks(database_dsn, banking_collection, target.document_id)
    assert old_chunks
    changed = knowledge_pb2.Document()
    changed.CopyFrom(target)
    changed.content = (
        "## Winter notice\n\nFrom the first of December the quayside kiosk accepts pelican-shaped "
        "tokens for this product.\n\n" + target.content
    )
    documents = [changed if d.document_id == target.document_id else d for d in banking_documents]
    response = ingest(stub, documents)
    assert (response.documents_added, response.documents_updated) == (0, 1)
    assert response.documents_unchanged == BANKING_COUNT - 1
    new_chunk_count = len(chunk_markdown(changed.content, CHUNK_WORDS))
    assert response.chunks_written == new_chunk_count

    new_chunks = stored_chunks(database_dsn, banking_collection, target.document_id)
    assert len(new_chunks) == new_chunk_count
    assert not {row[0] for row in old_chunks} & {row[0] for row in new_chunks}, "old chunks are still stored"
    for _, start, end, text in new_chunks:
        assert changed.content[start:end] == text
    passages = search(stub, "pelican-shaped tokens at the quayside kiosk", [banking_collection], top_k=3)
    assert passages[0].document_id == target.document_id
    assert passages[0].section.startswith("Winter notice")


def test_bad_requests_get_invalid_argument_and_the_service_keeps_serving(stub, banking_collection):
    for query in ("", "   "):
        with pytest.raises(grpc.RpcError) as raised:
            search(stub, query)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "query is empty" in raised.value.details()

    with pytest.raises(grpc.RpcError) as raised:
        search(stub, "card fees", top_k=500)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "top_k" in raised.value.details()

    nameless = knowledge_pb2.Document(title="Savings rates for spring", content="Rates go up.",
                                      collection=banking_collection)
    with pytest.raises(grpc.RpcError) as raised:
        ingest(stub, [nameless])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Savings rates for spring" in raised.value.details()
    assert "no document_id" in raised.value.details()

    empty = knowledge_pb2.Document(document_id="empty-doc", title="Empty", content=" \n",
                                   collection=banking_collection)
    with pytest.raises(grpc.RpcError) as raised:
        ingest(stub, [empty])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'empty-doc'" in raised.value.details() and "empty content" in raised.value.details()

    assert search(stub, "I lost my card")[0].document_id == "lost-or-stolen-card"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_empty_dsn_stops_the_service_with_a_clear_message(tmp_path):
    config = tmp_path / "knowledge.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path),
        "knowledge": {"endpoint": {"port": _free_port(), "metrics_port": _free_port()}},
    }))
    env = {**OFFLINE_ENVIRONMENT, "PATH": "/usr/bin:/bin", "QUIETLINE_DATABASE__DSN": ""}
    result = subprocess.run(
        [sys.executable, "-m", "services.knowledge", "--config", str(config)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "database.dsn is empty" in result.stderr
    assert "QUIETLINE_DATABASE__DSN" in result.stderr


async def test_two_connections_migrating_at_once_apply_each_migration_once(database_dsn):
    # Two sessions racing, as two knowledge processes starting together would, on a fresh schema.
    schema = f"knowledge_migrations_{uuid.uuid4().hex[:8]}"
    first = await psycopg.AsyncConnection.connect(database_dsn, autocommit=True)
    second = await psycopg.AsyncConnection.connect(database_dsn, autocommit=True)
    async with first, second:
        try:
            applied = await asyncio.gather(apply_migrations(first, schema), apply_migrations(second, schema))
            every = sorted(path.stem for path in MIGRATIONS_DIR.glob("*.sql"))
            assert len(every) >= 2
            assert sorted(applied, key=len) == [[], every]
            cursor = await first.execute(f"SELECT version FROM {schema}.schema_migrations ORDER BY version")
            assert [row[0] for row in await cursor.fetchall()] == every
            cursor = await first.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s ORDER BY indexname", [schema]
            )
            indexes = {row[0] for row in await cursor.fetchall()}
            assert {"chunks_embedding_hnsw", "chunks_tsv_gin", "chunks_embedding_key"} <= indexes
            assert await apply_migrations(first, schema) == []
        finally:
            await first.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

"""The knowledge service, run as a real process against the real embedded PostgreSQL + pgvector.

Covers the seeded sample knowledge base, streamed ingestion of part of the shared banking knowledge
base (../shared/data/kb/banking), hybrid search with citations, change detection on re-ingest,
errors, and migrations started by two processes at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import sys
import uuid
from datetime import datetime
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
from services.kit.database import apply_migrations
from services.knowledge.store import MIGRATIONS_DIR

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
            applied = await asyncio.gather(apply_migrations(first, schema, MIGRATIONS_DIR), apply_migrations(second, schema, MIGRATIONS_DIR))
            every = sorted(path.stem for path in MIGRATIONS_DIR.glob("*.sql"))
            assert len(every) >= 2
            assert sorted(applied, key=len) == [[], every]
            cursor = await first.execute(f"SELECT version FROM {schema}.schema_migrations ORDER BY version")
            assert [row[0] for row in await cursor.fetchall()] == every
            cursor = await first.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s ORDER BY indexname", [schema]
            )
            indexes = {row[0] for row in await cursor.fetchall()}
            assert {"chunks_embedding_hnsw", "chunks_collection_tsv_gin", "chunks_embedding_key"} <= indexes
            assert await apply_migrations(first, schema, MIGRATIONS_DIR) == []
        finally:
            await first.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# --- Versions, pruning, refusals, search modes and collection filters -----------------------------

# Slightly over knowledge.max_document_bytes (20 MiB by default) yet under the server's receive
# limit (max_document_bytes + 1 MiB), so the service itself must refuse it; and a message over
# that receive limit, which gRPC refuses before the service sees it.
DOCUMENT_LIMIT = KnowledgeSettings().max_document_bytes
OVER_DOCUMENT_LIMIT = 21_000_000
OVER_RECEIVE_LIMIT = 25 * 1024 * 1024
# Over gRPC's default 4 MiB message size, well under the document limit.
LARGE_DOCUMENT_BYTES = 6_000_000


def fresh_collection(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def make_document(collection: str, document_id: str, content: str, **fields) -> knowledge_pb2.Document:
    title = fields.pop("title", None) or chunk_markdown(content, CHUNK_WORDS)[0].section or document_id
    return knowledge_pb2.Document(collection=collection, document_id=document_id, title=title, content=content,
                                  **fields)


def get_document(stub, collection: str, document_id: str, version: int = 0) -> knowledge_pb2.DocumentVersion:
    request = knowledge_pb2.GetDocumentRequest(collection=collection, document_id=document_id, version=version)
    return stub.GetDocument(request, timeout=RPC_TIMEOUT_S)


def search_in(stub, query: str, collection: str, top_k: int = 5, mode=knowledge_pb2.SEARCH_MODE_HYBRID,
              distinct: bool = False) -> list[knowledge_pb2.Passage]:
    request = knowledge_pb2.SearchRequest(query=query, top_k=top_k, collections=[collection], mode=mode,
                                          distinct_documents=distinct)
    return list(stub.Search(request, timeout=RPC_TIMEOUT_S).passages)


def stats(stub) -> dict[str, tuple[int, int, int, int]]:
    """(documents, chunks, versions, removed_documents) of every collection."""
    reply = stub.Stats(knowledge_pb2.StatsRequest(), timeout=RPC_TIMEOUT_S)
    return {row.collection: (row.documents, row.chunks, row.versions, row.removed_documents)
            for row in reply.collections}


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


TRAVEL_V1 = (
    "# Travel notice\n\nTell us before you travel abroad so your debit card keeps working at foreign cash "
    "machines. A travel notice lasts ninety days and can be set in the app under Card settings.\n"
)
TRAVEL_V2 = (
    "# Travel notice\n\nTravel notices are no longer needed: your debit card works at foreign cash machines "
    "automatically. If a machine abroad declines your card, call the number on its back.\n"
)
BRANCH_HOURS = (
    "# Branch opening hours\n\nBranches open from nine to five on weekdays and from nine to noon on Saturdays. "
    "The harbour branch stays open until seven on Thursdays.\n"
)


def test_past_versions_stay_citable_after_a_change_and_a_removal(stub):
    collection = fresh_collection("versions")
    travel = make_document(collection, "travel-notice", TRAVEL_V1, source_uri="file:///kb/travel-notice.md")
    hours = make_document(collection, "branch-hours", BRANCH_HOURS, source_uri="file:///kb/branch-hours.md")
    assert ingest(stub, [travel, hours]).documents_added == 2
    query = "will my debit card work at foreign cash machines when I travel abroad"

    cited = search_in(stub, query, collection)[0]
    assert (cited.collection, cited.document_id, cited.version) == (collection, "travel-notice", 1)
    assert TRAVEL_V1[cited.start_char : cited.end_char] == cited.text

    changed = knowledge_pb2.Document()
    changed.CopyFrom(travel)
    changed.content = TRAVEL_V2
    response = ingest(stub, [changed, hours])
    assert (response.documents_added, response.documents_updated, response.documents_unchanged) == (0, 1, 1)
    current = search_in(stub, query, collection)[0]
    assert (current.document_id, current.version) == ("travel-notice", 2)
    assert TRAVEL_V2[current.start_char : current.end_char] == current.text
    assert "no longer needed" in current.text

    # The old citation still resolves to exactly the passage that was cited.
    old = get_document(stub, collection, "travel-notice", cited.version)
    assert old.version == 1 and old.document.content == TRAVEL_V1
    assert old.document.content[cited.start_char : cited.end_char] == cited.text
    assert not old.current and not old.removed
    assert datetime.fromisoformat(old.superseded_at) >= datetime.fromisoformat(old.created_at)
    latest = get_document(stub, collection, "travel-notice")
    assert (latest.version, latest.current, latest.removed, latest.superseded_at) == (2, True, False, "")
    assert latest.document.content == TRAVEL_V2
    assert latest.document.source_uri == "file:///kb/travel-notice.md"
    assert get_document(stub, collection, "travel-notice", 2) == latest

    before = stats(stub)[collection]
    assert before == (2, 2, 3, 0)
    removal = knowledge_pb2.RemoveDocumentsRequest(collection=collection,
                                                   document_ids=["travel-notice", "never-ingested"])
    assert stub.RemoveDocuments(removal, timeout=RPC_TIMEOUT_S).documents_removed == 1
    assert "travel-notice" not in {p.document_id for p in search_in(stub, query, collection, top_k=10)}
    assert stats(stub)[collection] == (1, 1, 3, 1)
    gone = get_document(stub, collection, "travel-notice")
    assert (gone.version, gone.current, gone.removed) == (2, False, True)
    assert gone.superseded_at and gone.document.content == TRAVEL_V2
    assert get_document(stub, collection, "travel-notice", 1).document.content == TRAVEL_V1
    error = refused(lambda: get_document(stub, collection, "travel-notice", 3))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "version 3" in error.details()
    # Removing it again removes nothing.
    assert stub.RemoveDocuments(removal, timeout=RPC_TIMEOUT_S).documents_removed == 0

    # Back again later: a new version number, never one a citation already points at.
    response = ingest(stub, [travel])
    assert (response.documents_added, response.documents_updated) == (1, 0)
    back = search_in(stub, query, collection)[0]
    assert (back.document_id, back.version) == ("travel-notice", 3)
    assert TRAVEL_V1[back.start_char : back.end_char] == back.text
    latest = get_document(stub, collection, "travel-notice")
    assert (latest.version, latest.current, latest.removed) == (3, True, False)
    assert get_document(stub, collection, "travel-notice", 2).removed
    assert get_document(stub, collection, "travel-notice", 1).document.content == TRAVEL_V1
    documents, chunks, versions, _ = stats(stub)[collection]
    assert (documents, chunks, versions) == (2, 2, 4)


def _prune_stream(documents, prefix: str):
    for position, item in enumerate(documents):
        options = knowledge_pb2.IngestOptions(prune_source_prefix=prefix) if position == 0 else None
        yield knowledge_pb2.IngestRequest(document=item, options=options)


def test_pruning_removes_only_the_folders_documents_the_stream_did_not_carry(stub):
    collection = fresh_collection("prune")
    elsewhere_collection = fresh_collection("prune-elsewhere")
    folder = f"file:///srv/kb/{collection}/"

    def article(document_id: str, source_uri: str, owner: str = collection) -> knowledge_pb2.Document:
        topic = document_id.replace("-", " ")
        content = f"# {topic.title()}\n\nHow {topic} works for our customers, step by step.\n"
        return make_document(owner, document_id, content, source_uri=source_uri)

    in_folder = [article(f"folder-{n}", f"{folder}folder-{n}.md") for n in range(3)]
    outside = [
        article("other-folder", "file:///srv/kb/other/other-folder.md"),
        # Shares the folder's path as a string prefix, but is a sibling folder.
        article("sibling-folder", f"{folder.rstrip('/')}-old/sibling-folder.md"),
        article("no-source", ""),
    ]
    other_collection = article("same-folder-other-collection", f"{folder}same.md", elsewhere_collection)
    assert ingest(stub, in_folder + outside).documents_added == 6
    assert ingest(stub, [other_collection]).documents_added == 1
    before = stats(stub)

    # A stream refused midway keeps the documents before the bad one, and prunes nothing.
    newcomer = article("folder-new", f"{folder}folder-new.md")
    nameless = knowledge_pb2.Document(collection=collection, title="Nameless", content="Some text.",
                                      source_uri=f"{folder}nameless.md")
    error = refused(lambda: stub.Ingest(_prune_stream([newcomer, nameless], folder), timeout=120))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "#2 in the stream" in error.details() and "nothing was removed" in error.details()
    after_refusal = stats(stub)
    assert after_refusal[collection] == (7, 7, 7, 0)
    assert after_refusal[elsewhere_collection] == before[elsewhere_collection]
    for item in in_folder + outside + [newcomer]:
        assert get_document(stub, collection, item.document_id).current, item.document_id

    response = stub.Ingest(_prune_stream([in_folder[0]], folder), timeout=120)
    assert (response.documents_unchanged, response.documents_removed) == (1, 3)
    assert (response.documents_added, response.documents_updated) == (0, 0)
    for item in in_folder[1:] + [newcomer]:
        assert get_document(stub, collection, item.document_id).removed, item.document_id
    for item in [in_folder[0], *outside]:
        assert get_document(stub, collection, item.document_id).current, item.document_id
    assert get_document(stub, elsewhere_collection, other_collection.document_id).current
    assert stats(stub)[collection] == (4, 4, 7, 3)
    assert stats(stub)[elsewhere_collection] == before[elsewhere_collection]
    found = {p.document_id for p in search_in(stub, "how does folder work", collection, top_k=10)}
    assert found == {"folder-0", "other-folder", "sibling-folder", "no-source"}

    # Without a prefix nothing is pruned.
    response = ingest(stub, [in_folder[0]])
    assert (response.documents_unchanged, response.documents_removed) == (1, 0)
    assert stats(stub)[collection][0] == 4


def _large_manual(size: int) -> str:
    """A Markdown manual of about `size` bytes whose paragraphs repeat (so they embed once), ending
    with one paragraph found nowhere else."""
    paragraph = " ".join(f"step{n % 20}" for n in range(CHUNK_WORDS)) + "."
    repeats = (size - 200) // (len(paragraph) + 2)
    ending = "## Last page\n\nThe quartermaster signs the vellum ledger at the lighthouse annex.\n"
    return "# Operations manual\n\n" + "\n\n".join([paragraph] * repeats) + "\n\n" + ending


def test_bad_requests_are_refused_and_leave_the_index_as_it_was(stub):
    collection = fresh_collection("refusals")
    assert ingest(stub, [make_document(collection, "branch-hours", BRANCH_HOURS)]).documents_added == 1

    def assert_refused(call, code, *fragments) -> grpc.RpcError:
        before = stats(stub)
        error = refused(call)
        assert error.code() == code, (error.code(), error.details())
        for fragment in fragments:
            assert fragment in error.details(), error.details()
        assert stats(stub) == before, "a refused request changed the index"
        assert search_in(stub, "when do branches open on Saturdays", collection)[0].document_id == "branch-hours"
        return error

    missing = f"missing-{uuid.uuid4().hex[:8]}"
    error = assert_refused(lambda: search_in(stub, "opening hours", missing), grpc.StatusCode.NOT_FOUND, repr(missing))
    assert repr(collection) in error.details()  # the collections that do exist are listed
    both = knowledge_pb2.SearchRequest(query="opening hours", collections=[collection, missing])
    error = assert_refused(lambda: stub.Search(both, timeout=RPC_TIMEOUT_S), grpc.StatusCode.NOT_FOUND, repr(missing))
    assert f"no collection named {missing!r}:" in error.details()

    assert_refused(lambda: search_in(stub, "Wie kann ich meine verlorene Karte sperren lassen?", collection),
                   grpc.StatusCode.INVALID_ARGUMENT, "German", "English")
    assert_refused(lambda: search_in(stub, "¿Cómo puedo bloquear mi tarjeta de crédito perdida?", collection),
                   grpc.StatusCode.INVALID_ARGUMENT, "Spanish")
    # Short queries and jargon cannot be told apart from English reliably, so they are searched.
    for query in ("CLI request", "SWIFT BIC IBAN transfer limits", "branch hours Saturday"):
        assert search_in(stub, query, collection), query

    assert_refused(lambda: search_in(stub, "branch\x00hours", collection), grpc.StatusCode.INVALID_ARGUMENT, "NUL")
    assert_refused(lambda: search_in(stub, "branch hours", collection, mode=9),
                   grpc.StatusCode.INVALID_ARGUMENT, "mode 9", "SEARCH_MODE_LEXICAL")
    for field in ("title", "source_uri", "document_id"):
        bad = make_document(collection, "nul-field", "Some text.", title="Nul field")
        setattr(bad, field, getattr(bad, field) + "\x00")
        assert_refused(lambda: ingest(stub, [bad]), grpc.StatusCode.INVALID_ARGUMENT, f"NUL characters in its {field}")
    odd_kind = make_document(collection, "odd-kind", "Some text.", title="Odd kind", kind=7)
    assert_refused(lambda: ingest(stub, [odd_kind]), grpc.StatusCode.INVALID_ARGUMENT, "kind 7", "DOCUMENT_KIND_FAQ")
    assert_refused(lambda: get_document(stub, collection, "branch\x00hours"), grpc.StatusCode.INVALID_ARGUMENT, "NUL")
    removal = knowledge_pb2.RemoveDocumentsRequest(collection=collection, document_ids=["branch-hours", "x\x00"])
    assert_refused(lambda: stub.RemoveDocuments(removal, timeout=RPC_TIMEOUT_S), grpc.StatusCode.INVALID_ARGUMENT,
                   "NUL")

    # The same id twice in one stream: refused at the second, the first is kept.
    before = stats(stub)[collection]
    first = make_document(collection, "twice", "# Twice\n\nThe first telling of the pelican ferry timetable.\n")
    second = make_document(collection, "twice", "# Twice\n\nThe second telling of the pelican ferry timetable.\n")
    error = refused(lambda: ingest(stub, [first, second]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "document 'twice' (#2 in the stream) repeats the id of document #1" in error.details()
    assert "1 added" in error.details()
    kept = get_document(stub, collection, "twice")
    assert (kept.version, kept.document.content) == (1, first.content)
    assert stats(stub)[collection] == (before[0] + 1, before[1] + 1, before[2] + 1, 0)

    # Larger than gRPC's default message size: the service takes it whole.
    large = make_document(collection, "operations-manual", _large_manual(LARGE_DOCUMENT_BYTES))
    assert len(large.content.encode()) > 4 * 1024 * 1024
    response = ingest(stub, [large])
    chunk_count = len(chunk_markdown(large.content, CHUNK_WORDS))
    assert (response.documents_added, response.chunks_written) == (1, chunk_count)
    passage = search_in(stub, "who signs the vellum ledger at the lighthouse annex", collection,
                        mode=knowledge_pb2.SEARCH_MODE_LEXICAL)[0]
    assert passage.document_id == "operations-manual" and passage.section == "Operations manual > Last page"
    assert large.content[passage.start_char : passage.end_char] == passage.text
    assert passage.end_char > len(large.content) - 100
    assert stats(stub)[collection][:2] == (before[0] + 2, before[1] + 1 + chunk_count)
    # Removed again, so the later tests' tables stay small.
    removal = knowledge_pb2.RemoveDocumentsRequest(collection=collection, document_ids=["operations-manual"])
    assert stub.RemoveDocuments(removal, timeout=RPC_TIMEOUT_S).documents_removed == 1

    over = make_document(collection, "over-the-limit", "x" * OVER_DOCUMENT_LIMIT, title="Over the limit")
    assert_refused(lambda: ingest(stub, [over]), grpc.StatusCode.INVALID_ARGUMENT, "'over-the-limit'",
                   f"{OVER_DOCUMENT_LIMIT:,} bytes of text", f"limit of {DOCUMENT_LIMIT:,} bytes",
                   "knowledge.max_document_bytes")
    huge = make_document(collection, "over-the-receive-limit", "x" * OVER_RECEIVE_LIMIT, title="Huge")
    assert_refused(lambda: ingest(stub, [huge]), grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_distinct_documents_search_modes_and_snippets(stub, first_ingest, banking_documents, banking_collection):
    query = "monthly maintenance fee waiver"
    every = search_in(stub, query, banking_collection, top_k=20)
    distinct = search_in(stub, query, banking_collection, top_k=10, distinct=True)
    ids = [p.document_id for p in distinct]
    assert len(ids) == 10 and len(set(ids)) == 10, ids
    # Each document's best passage, in the order of the plain ranking.
    assert distinct[0].chunk_hash == every[0].chunk_hash
    best_per_document = {}
    for passage in every:
        best_per_document.setdefault(passage.document_id, passage.chunk_hash)
    for passage in distinct:
        if passage.document_id in best_per_document:
            assert passage.chunk_hash == best_per_document[passage.document_id]

    target = banking_documents[7]
    contents = {}
    for mode in (knowledge_pb2.SEARCH_MODE_VECTOR, knowledge_pb2.SEARCH_MODE_LEXICAL, knowledge_pb2.SEARCH_MODE_HYBRID):
        passages = search_in(stub, target.title, banking_collection, top_k=5, mode=mode)
        name = knowledge_pb2.SearchMode.Name(mode)
        assert len(passages) == 5, name
        assert target.document_id in {p.document_id for p in passages}, (name, [p.document_id for p in passages])
        assert [p.score for p in passages] == sorted((p.score for p in passages), reverse=True), name
        for passage in passages:
            assert passage.collection == banking_collection
            key = (passage.document_id, passage.version)
            if key not in contents:
                contents[key] = get_document(stub, banking_collection, *key).document.content
            content = contents[key]
            assert content[passage.start_char : passage.end_char] == passage.text
            assert passage.snippet and passage.snippet in passage.text
            assert content[passage.snippet_start : passage.snippet_end] == passage.snippet
            assert passage.start_char <= passage.snippet_start < passage.snippet_end <= passage.end_char
            assert passage.chunk_hash == hashlib.sha256(passage.text.encode()).hexdigest()


GARDEN_DOCUMENTS = {
    "pruning-roses": "# Pruning roses\n\nCut rose stems back by a third in late winter, just above an outward bud.\n",
    "tomato-blight": "# Tomato blight\n\nRemove tomato leaves with brown patches; water at the base, not the leaves.\n",
    "compost-heap": "# Building a compost heap\n\nLayer kitchen scraps with cardboard; turn the heap monthly.\n",
    "lawn-moss": "# Moss in the lawn\n\nRake out moss in spring, aerate the soil and sow grass seed on bare patches.\n",
    "bulb-planting": "# Planting bulbs\n\nPlant tulip bulbs in November, three times as deep as the bulb is tall.\n",
}


def test_a_small_collection_still_fills_top_k_beside_a_large_one(stub, first_ingest, banking_documents):
    # Many chunks close to the query in other collections (copies of the banking documents reuse
    # their stored vectors), five far from it in the collection searched.
    for copy in range(3):
        owner = fresh_collection(f"banking-copy{copy}")
        copies = []
        for item in banking_documents:
            duplicate = knowledge_pb2.Document()
            duplicate.CopyFrom(item)
            duplicate.collection = owner
            copies.append(duplicate)
        assert ingest(stub, copies).documents_added == BANKING_COUNT
    garden = fresh_collection("garden")
    response = ingest(stub, [make_document(garden, name, content) for name, content in GARDEN_DOCUMENTS.items()])
    assert response.documents_added == len(GARDEN_DOCUMENTS)
    assert sum(chunks for _, chunks, _, _ in stats(stub).values()) > 500

    for mode in (knowledge_pb2.SEARCH_MODE_HYBRID, knowledge_pb2.SEARCH_MODE_VECTOR):
        passages = search_in(stub, "What is the monthly fee on my business checking account?", garden,
                             top_k=5, mode=mode, distinct=True)
        assert {p.collection for p in passages} == {garden}
        assert sorted(p.document_id for p in passages) == sorted(GARDEN_DOCUMENTS), knowledge_pb2.SearchMode.Name(mode)


def test_full_text_statistics_match_the_chunks_after_every_change(stub, first_ingest, database_dsn):
    # Runs after the tests above have added, replaced, pruned and removed documents: the per-collection
    # lexeme counts and chunk totals the full-text ranking weighs words by must equal a recount.
    with psycopg.connect(database_dsn) as conn:
        conn.execute("SET search_path TO knowledge, public")
        stored = conn.execute(
            "SELECT collection, lexeme, chunks FROM lexeme_chunks WHERE chunks > 0 ORDER BY 1, 2"
        ).fetchall()
        recounted = conn.execute(
            "SELECT collection, lexeme, count(*) FROM chunks, unnest(tsv) GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        totals = conn.execute(
            "SELECT name, chunk_count, (SELECT count(*) FROM chunks WHERE collection = name) FROM collections"
        ).fetchall()
    assert len(recounted) > 1000
    assert stored == recounted
    assert all(kept == counted for _, kept, counted in totals), totals


def test_full_text_ranking_weighs_rare_words_above_common_ones(stub):
    collection = f"idf-{uuid.uuid4().hex[:8]}"
    # "card" is in 6 of 37 documents, several times each and in their titles; "overdraft" in one.
    # Without inverse document frequency the card documents rank first for "card overdraft"
    # (ts_rank 0.75 against 0.68); weighed by rarity, the overdraft document must.
    documents = [
        knowledge_pb2.Document(document_id=f"card-{n}", title=f"Card topic {n}", collection=collection,
                               content=f"Your card, your card, your card: card fact number {n}.")
        for n in range(6)
    ] + [
        knowledge_pb2.Document(document_id=f"hours-{n}", title=f"Branch hours {n}", collection=collection,
                               content=f"Branch {n} opens at nine on weekdays and at ten on Saturdays.")
        for n in range(30)
    ] + [knowledge_pb2.Document(document_id="overdraft", title="Overdraft", collection=collection,
                                content="An overdraft on the linked account costs a fee.")]
    ingest(stub, documents)
    request = knowledge_pb2.SearchRequest(query="card overdraft", top_k=3, collections=[collection],
                                          mode=knowledge_pb2.SEARCH_MODE_LEXICAL)
    passages = stub.Search(request, timeout=RPC_TIMEOUT_S).passages
    assert passages[0].document_id == "overdraft", [p.document_id for p in passages]
    assert {p.document_id for p in passages[1:]} <= {f"card-{n}" for n in range(6)}

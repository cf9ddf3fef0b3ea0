"""`quietline kb ingest/search/stats`, run as the operator runs them, against a real knowledge service.

The CLI is a subprocess with the services' offline environment; the knowledge service is the real
process on the test ports with the real embedded PostgreSQL, and `--config` is the same file it
was started with, so the CLI finds it through knowledge.endpoint.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
import yaml

from conftest import REPO_ROOT, start_service
from quietline.v1 import knowledge_pb2, knowledge_pb2_grpc
from services.kit.config import KnowledgeSettings
from services.kit.offline import OFFLINE_ENVIRONMENT
from services.knowledge.chunking import chunk_markdown
from services.knowledge.documents import read_documents

CLI_TIMEOUT_S = 120
HIT_KEYS = {"document_id", "title", "section", "snippet", "score", "collection", "version", "snippet_start",
            "snippet_end", "source_uri"}
COUNTS = re.compile(r"(\d+) added, (\d+) updated, (\d+) unchanged, (\d+) removed; (\d+) chunks written")

FILES = {
    "lost-card.md": (
        "# Lost or stolen card\n\nIf your debit card is lost or stolen, freeze it at once in the app under "
        "Card settings, then order a replacement. A frozen card can be unfrozen if you find it again.\n"
    ),
    "branch-hours.html": (
        "<html><head><title>Branch opening hours</title><script>var tracking = 1;</script></head><body>"
        "<nav>Home | Branches</nav><h1>Branch opening hours</h1><p>Branches open from nine to five on weekdays "
        "and from nine to noon on Saturdays.</p><p>The harbour branch stays open until seven on Thursdays.</p>"
        "</body></html>\n"
    ),
    "faq.csv": (
        "question,answer\n"
        "How do I order a new chequebook?,Order a chequebook in the app under Payments; it arrives within "
        "five working days.\n"
        "Can I change the language of my statements?,Yes: choose the statement language under Profile and "
        "documents.\n"
    ),
    "safe-deposit.txt": (
        "Safe deposit boxes\n\nSafe deposit boxes can be rented at the harbour branch by the year. Bring "
        "photo identification and a second key holder if you want one.\n"
    ),
}
FAQ_ID = "faq#how-do-i-order-a-new-chequebook"


@pytest.fixture(scope="module")
def knowledge(service_config: Path, database_dsn: str):
    service = start_service("knowledge", service_config, extra_env={"QUIETLINE_DATABASE__DSN": database_dsn})
    yield service
    service.stop()


@pytest.fixture(scope="module")
def stub(knowledge) -> knowledge_pb2_grpc.KnowledgeStub:
    with grpc.insecure_channel(knowledge.target) as channel:
        yield knowledge_pb2_grpc.KnowledgeStub(channel)


def quietline(config: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `quietline ARGS --config CONFIG` in the environment the services run in."""
    return subprocess.run(
        [sys.executable, "-m", "services.appliance.cli", *args, "--config", str(config)],
        cwd=REPO_ROOT, env={**os.environ, **OFFLINE_ENVIRONMENT}, capture_output=True, text=True,
        timeout=CLI_TIMEOUT_S,
    )


def counts(result: subprocess.CompletedProcess, collection: str) -> tuple[int, ...]:
    assert result.returncode == 0, result.stderr
    assert f"collection {collection}:" in result.stdout, result.stdout
    match = COUNTS.search(result.stdout)
    assert match, result.stdout
    return tuple(int(number) for number in match.groups())


def search_json(config: Path, query: str, collection: str, *extra: str) -> list[dict]:
    result = quietline(config, "kb", "search", query, "--collection", collection, "--json", *extra)
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert isinstance(hits, list)
    for hit in hits:
        assert HIT_KEYS <= hit.keys(), hit
        assert hit["collection"] == collection
    return hits


def counts_by_collection(stub) -> dict[str, tuple[int, int, int, int]]:
    reply = stub.Stats(knowledge_pb2.StatsRequest(), timeout=30)
    return {row.collection: (row.documents, row.chunks, row.versions, row.removed_documents)
            for row in reply.collections}


def expected_chunks(folder: Path) -> int:
    chunk_words = KnowledgeSettings().chunk_words
    return sum(len(chunk_markdown(item.content, chunk_words)) for item in read_documents(folder))


def test_ingest_search_prune_and_stats_of_a_folder(stub, service_config, tmp_path):
    collection = f"cli-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "kb"
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_text(text)
    chunks = expected_chunks(folder)

    first = quietline(service_config, "kb", "ingest", str(folder), "--collection", collection)
    assert counts(first, collection) == (5, 0, 0, 0, chunks)

    hits = search_json(service_config, "I lost my debit card, how do I freeze it?", collection)
    assert hits and hits[0]["document_id"] == "lost-card", hits
    best = hits[0]
    assert (best["title"], best["section"], best["version"]) == ("Lost or stolen card", "Lost or stolen card", 1)
    assert best["snippet"] in FILES["lost-card.md"] and "freeze" in best["snippet"]
    assert FILES["lost-card.md"][best["snippet_start"] : best["snippet_end"]] == best["snippet"]
    assert best["source_uri"] == (folder / "lost-card.md").resolve().as_uri()
    assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)

    hours = search_json(service_config, "Is the branch open on Saturday?", collection, "--k", "2")
    assert len(hours) == 2 and hours[0]["document_id"] == "branch-hours"
    assert hours[0]["title"] == "Branch opening hours" and "tracking" not in hours[0]["snippet"]

    faq = search_json(service_config, "order a chequebook", collection, "--distinct")
    assert faq[0]["document_id"] == FAQ_ID
    assert faq[0]["title"] == "How do I order a new chequebook?"
    assert faq[0]["snippet"].startswith("Order a chequebook in the app")
    assert len({hit["document_id"] for hit in faq}) == len(faq) == 5
    # The other row is a document of its own.
    language = search_json(service_config, "statement language", collection, "--k", "1")
    assert language[0]["document_id"] == "faq#can-i-change-the-language-of-my-statements"

    text_output = quietline(service_config, "kb", "search", "safe deposit box rental", "--collection", collection)
    assert text_output.returncode == 0, text_output.stderr
    assert text_output.stdout.startswith(f"1. Safe deposit boxes [{collection}/safe-deposit v1]")

    # The folder is the whole truth: a deleted file's document disappears on the next ingest.
    (folder / "safe-deposit.txt").unlink()
    chunks_left = expected_chunks(folder)
    again = quietline(service_config, "kb", "ingest", str(folder), "--collection", collection)
    assert counts(again, collection) == (0, 0, 4, 1, 0)
    gone = search_json(service_config, "safe deposit box rental", collection, "--k", "10")
    assert gone and "safe-deposit" not in {hit["document_id"] for hit in gone}

    stats = quietline(service_config, "kb", "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    reply = json.loads(stats.stdout)
    assert reply["chunk_words"] == KnowledgeSettings().chunk_words and reply["embedding_model"]
    row = {item["collection"]: item for item in reply["collections"]}[collection]
    assert (row["documents"], row["chunks"], row["versions"], row["removed_documents"]) == (4, chunks_left, 5, 1)
    assert row["last_ingested_at"]
    assert counts_by_collection(stub)[collection] == (4, chunks_left, 5, 1)

    table = quietline(service_config, "kb", "stats")
    assert table.returncode == 0, table.stderr
    line = next(line for line in table.stdout.splitlines() if line.startswith(collection))
    assert line.split()[1:5] == ["4", str(chunks_left), "5", "1"]


def test_a_folder_with_a_corrupt_pdf_ingests_nothing(stub, service_config, tmp_path):
    collection = f"cli-corrupt-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "lost-card.md").write_text(FILES["lost-card.md"])
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R\ngarbage without end")
    before = counts_by_collection(stub)

    result = quietline(service_config, "kb", "ingest", str(folder), "--collection", collection)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert str(folder / "broken.pdf") in result.stderr and "not a readable PDF" in result.stderr
    assert "nothing was ingested" in result.stderr
    assert result.stdout == ""
    assert counts_by_collection(stub) == before
    assert collection not in before


def test_a_200_mb_file_and_binary_junk_are_refused_without_reading_them(stub, service_config, tmp_path):
    collection = f"cli-large-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "lost-card.md").write_text(FILES["lost-card.md"])
    # A sparse 200 MB file: refused by its size before a byte of it is read.
    with (folder / "archive.txt").open("wb") as huge:
        huge.truncate(200 * 1024 * 1024)
    (folder / "photo.md").write_bytes(bytes(range(256)) * 64)
    before = counts_by_collection(stub)

    result = quietline(service_config, "kb", "ingest", str(folder), "--collection", collection)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert str(folder / "archive.txt") in result.stderr and "200" in result.stderr
    assert "knowledge.max_document_bytes" in result.stderr
    assert str(folder / "photo.md") in result.stderr and "not a text document" in result.stderr
    assert "nothing was ingested" in result.stderr
    assert counts_by_collection(stub) == before


def test_unknown_collection_is_bad_input(stub, service_config):
    missing = f"no-such-{uuid.uuid4().hex[:8]}"
    result = quietline(service_config, "kb", "search", "lost card", "--collection", missing)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"no collection named {missing!r}" in result.stderr
    assert "Traceback" not in result.stderr

    german = quietline(service_config, "kb", "search", "Wie kann ich meine verlorene Karte sperren lassen?")
    assert german.returncode == 2 and "German" in german.stderr, german.stderr

    for k in ("0", "-1", "many"):
        bad_k = quietline(service_config, "kb", "search", "lost card", "--k", k)
        assert bad_k.returncode == 2 and "--k" in bad_k.stderr and "Traceback" not in bad_k.stderr, bad_k.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_stopped_service_says_to_start_the_appliance(service_config, tmp_path):
    config = yaml.safe_load(service_config.read_text())
    config["knowledge"]["endpoint"] = {"port": _free_port(), "metrics_port": _free_port()}
    down = tmp_path / "down.yaml"
    down.write_text(yaml.safe_dump(config))
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "lost-card.md").write_text(FILES["lost-card.md"])

    for args in (("kb", "search", "lost card"), ("kb", "stats", "--json"), ("kb", "ingest", str(folder))):
        result = quietline(down, *args)
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        assert "knowledge" in result.stderr and "quietline up" in result.stderr
        # One line naming the problem and the fix; no traceback, no warning.
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stdout == ""

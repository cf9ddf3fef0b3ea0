"""Knowledge service benchmark: retrieval quality, search latency and ingest throughput.

Runs the real knowledge service (gRPC) on a fresh embedded PostgreSQL + pgvector and measures:
- quality on ../shared/data/kb/banking: for each task, the caller's first utterance derived from the
  scenario text (caller_questions.py) is searched for 10 distinct documents; capped recall@5/@10
  (hits / min(k, required)) and MRR of the task's required documents, for vector-only, full-text-only,
  hybrid without query rewriting and hybrid (the service default) in the same run;
- FAQ quality on BANKING77: one FAQ entry per intent whose text is 10 real customer queries of the
  train split; queries of the test split must find their intent's entry (accuracy@1, recall@5);
- ingest throughput of the bank KB (every chunk embedded), of an unchanged re-ingest, and of copies
  of the KB under new ids up to --scale-chunks chunks (vectors reused, so it measures the database
  write and index path), and search latency p50/p99 at both sizes, including a search of the small
  collection while the table holds the large one (the HNSW iterative scan's case).

Prints a JSON summary and writes the full report (per task rows included) to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from latency_stats import percentiles  # noqa: E402

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BANKING = SHARED_DATA / "kb" / "banking"
BANKING77 = SHARED_DATA / "intents" / "banking77"
BENCH_PORT_BASE = 56560
BANK_COLLECTION = "banking"
FAQ_COLLECTION = "banking77-faq"
SCALE_COLLECTION = "banking-scaled"
FAQ_EXAMPLES_PER_INTENT = 10
FAQ_TEST_QUERIES = 770
LATENCY_QUERIES = 200
SEARCH_K = 10

sys.path.insert(0, str(Path(__file__).resolve().parent))
from caller_questions import load_caller_questions  # noqa: E402


def retrieval_scores(rankings: list[list[str]], required: list[tuple[str, ...]]) -> dict:
    """Capped recall@5/@10 and MRR of the required documents over all tasks."""
    recall = {5: [], 10: []}
    reciprocal = []
    for ranked, needed in zip(rankings, required):
        wanted = set(needed)
        for k in recall:
            recall[k].append(len(wanted & set(ranked[:k])) / min(k, len(wanted)))
        reciprocal.append(next((1 / rank for rank, doc in enumerate(ranked, start=1) if doc in wanted), 0.0))
    return {"recall_at_5": round(float(np.mean(recall[5])), 4), "recall_at_10": round(float(np.mean(recall[10])), 4),
            "mrr": round(float(np.mean(reciprocal)), 4)}


class KnowledgeClient:
    """The benchmark's gRPC client of the knowledge service."""

    def __init__(self, target: str) -> None:
        from quietline.v1 import knowledge_pb2, knowledge_pb2_grpc
        from services.kit.channels import open_channel

        self.pb = knowledge_pb2
        self.channel = open_channel(target, 1800.0)
        self.stub = knowledge_pb2_grpc.KnowledgeStub(self.channel)

    async def search(self, query: str, collection: str, mode: str = "hybrid", verbatim: bool = False,
                     k: int = SEARCH_K) -> tuple[list[str], float]:
        request = self.pb.SearchRequest(
            query=query, top_k=k, collections=[collection], distinct_documents=True, verbatim=verbatim,
            mode=getattr(self.pb, f"SEARCH_MODE_{mode.upper()}"),
        )
        started = time.perf_counter()
        response = await self.stub.Search(request, timeout=30)
        return [p.document_id for p in response.passages], (time.perf_counter() - started) * 1000

    async def ingest(self, documents) -> tuple[object, float]:
        from services.knowledge.client import ingest_requests

        started = time.perf_counter()
        response = await self.stub.Ingest(ingest_requests(documents), timeout=3600)
        return response, time.perf_counter() - started

    async def stats(self) -> dict:
        response = await self.stub.Stats(self.pb.StatsRequest(), timeout=30)
        return {row.collection: {"documents": row.documents, "chunks": row.chunks} for row in response.collections}


def throughput(response, seconds: float, chunks: int | None = None) -> dict:
    documents = response.documents_added + response.documents_updated + response.documents_unchanged
    report = {"documents": documents, "seconds": round(seconds, 2),
              "documents_per_s": round(documents / seconds, 1)}
    chunks = response.chunks_written if chunks is None else chunks
    if chunks:
        report |= {"chunks_written": chunks, "chunks_per_s": round(chunks / seconds, 1)}
    return report


async def quality_section(client: KnowledgeClient) -> dict:
    questions = load_caller_questions(BANKING / "tasks")
    variants = {"vector": ("vector", False), "full_text": ("lexical", False),
                "hybrid_verbatim": ("hybrid", True), "hybrid": ("hybrid", False)}
    report: dict = {"tasks": len(questions), "k": SEARCH_K,
                    "question_sources": {s: sum(q.source == s for q in questions) for s in ("scripted", "start_by", "goal")}}
    rankings: dict[str, list[list[str]]] = {}
    latencies = []
    for name, (mode, verbatim) in variants.items():
        rankings[name] = []
        for question in questions:
            ranked, elapsed = await client.search(question.question, BANK_COLLECTION, mode, verbatim)
            rankings[name].append(ranked)
            latencies.append(elapsed)
        report[name] = retrieval_scores(rankings[name], [q.required_documents for q in questions])
    # What a perfect re-ranker of the hybrid's 50 best documents could reach: the required documents
    # among them moved to the top. Bounds what re-ranking alone can add.
    top50 = [(await client.search(q.question, BANK_COLLECTION, "hybrid", False, k=50))[0] for q in questions]
    report["hybrid_top50_reordered_ceiling"] = {
        "recall_at_10": round(float(np.mean([
            min(len(set(q.required_documents) & set(ranked)), 10) / min(10, len(q.required_documents))
            for q, ranked in zip(questions, top50)])), 4),
        "required_documents_in_top50": round(float(np.mean([
            len(set(q.required_documents) & set(ranked)) / len(q.required_documents)
            for q, ranked in zip(questions, top50)])), 4),
    }
    base = report["vector"]["recall_at_10"]
    report["hybrid_over_vector_recall_at_10"] = round(report["hybrid"]["recall_at_10"] / base, 3) if base else None
    text_base = report["full_text"]["recall_at_10"]
    report["hybrid_over_full_text_recall_at_10"] = (
        round(report["hybrid"]["recall_at_10"] / text_base, 3) if text_base else None
    )
    report["per_task"] = [
        {"task": q.task_id, "question": q.question, "source": q.source, "required": len(q.required_documents),
         "hybrid_hits_at_10": len(set(q.required_documents) & set(rankings["hybrid"][i][:SEARCH_K]))}
        for i, q in enumerate(questions)
    ]
    return report


def banking77_rows(split: str) -> list[tuple[str, str]]:
    with (BANKING77 / f"{split}.csv").open(newline="") as handle:
        return [(row["text"], row["category"]) for row in csv.DictReader(handle)]


async def faq_section(client: KnowledgeClient) -> dict:
    """BANKING77 as an FAQ: does a customer's query find the entry of its own intent?"""
    rng = random.Random(77)
    by_intent: dict[str, list[str]] = defaultdict(list)
    for text, intent in banking77_rows("train"):
        by_intent[intent].append(text)
    documents = []
    for intent, examples in sorted(by_intent.items()):
        chosen = rng.sample(examples, min(FAQ_EXAMPLES_PER_INTENT, len(examples)))
        documents.append(client.pb.Document(
            document_id=intent, title=intent.replace("_", " "), collection=FAQ_COLLECTION,
            content="\n".join(f"- {example}" for example in chosen), kind=client.pb.DOCUMENT_KIND_FAQ,
        ))
    response, seconds = await client.ingest(documents)
    test = banking77_rows("test")
    rng.shuffle(test)
    test = test[:FAQ_TEST_QUERIES]
    top1 = []
    top5 = []
    for text, intent in test:
        ranked, _ = await client.search(text, FAQ_COLLECTION, "hybrid", False, k=5)
        top1.append(bool(ranked) and ranked[0] == intent)
        top5.append(intent in ranked)
    return {"intents": len(documents), "examples_per_entry": FAQ_EXAMPLES_PER_INTENT, "test_queries": len(test),
            "accuracy_at_1": round(float(np.mean(top1)), 4), "recall_at_5": round(float(np.mean(top5)), 4),
            "ingest": throughput(response, seconds)}


async def latency(client: KnowledgeClient, queries: list[str], collection: str) -> dict:
    times = []
    for query in queries:
        times.append((await client.search(query, collection))[1])
    return percentiles(times, points=(50, 99))


async def speed_section(client: KnowledgeClient, bank_documents: list, scale_chunks: int) -> dict:
    queries = [q.question for q in load_caller_questions(BANKING / "tasks")]
    queries += [text for text, _ in banking77_rows("test")[:LATENCY_QUERIES - len(queries)]]
    report: dict = {"queries": len(queries),
                    "bank_kb_search_ms": await latency(client, queries, BANK_COLLECTION)}
    stats = await client.stats()
    per_copy = stats[BANK_COLLECTION]["chunks"]
    copies = max(1, -(-scale_chunks // per_copy))

    def replicas():
        for copy in range(copies):
            for document in bank_documents:
                replica = client.pb.Document()
                replica.CopyFrom(document)
                replica.document_id = f"{document.document_id}~copy{copy}"
                replica.collection = SCALE_COLLECTION
                yield replica

    response, seconds = await client.ingest(replicas())
    report["scaled_ingest_vectors_reused"] = throughput(response, seconds)
    stats = await client.stats()
    report["scaled_chunks"] = stats[SCALE_COLLECTION]["chunks"]
    report["table_chunks"] = sum(row["chunks"] for row in stats.values())
    report["scaled_search_ms"] = await latency(client, queries, SCALE_COLLECTION)
    report["bank_kb_search_ms_in_large_table"] = await latency(client, queries, BANK_COLLECTION)
    return report


async def run_benchmark(scale_chunks: int, sections: set[str], chunk_words: int | None) -> dict:
    from services.appliance.port_plan import config_with_ports, write_config
    from services.appliance.supervisor import Supervisor
    from services.kit.config import load_settings
    from services.knowledge.documents import read_documents

    state = Path(tempfile.mkdtemp(prefix="quietline-bench-knowledge-"))
    knowledge = {"seed_documents": ""} | ({"chunk_words": chunk_words} if chunk_words else {})
    config = write_config(state / "quietline.yaml",
                          config_with_ports(state, BENCH_PORT_BASE, {"knowledge": knowledge}))
    settings = load_settings(config)
    supervisor = Supervisor(settings, config, only=("knowledge",))
    await asyncio.to_thread(supervisor.up)
    client = KnowledgeClient(settings.knowledge.endpoint.target)
    report: dict = {
        "benchmark": "knowledge", "embedding_model": settings.knowledge.embedding_model,
        "chunk_words": settings.knowledge.chunk_words,
        "index": {"hnsw": "m=16, ef_construction=64 (pgvector defaults)", "ef_search": 200,
                  "iterative_scan": "relaxed_order", "full_text": "english; GIN (collection, tsv); OR query; candidates from the rarest words within "
                                 "5000 postings; idf x ts_rank, weights body 0.5, section 0.7, title 1.0",
                  "fusion": "reciprocal rank fusion, k=60, up to 200 candidates per ranking"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
    }
    try:
        bank_documents = read_documents(BANKING / "documents", BANK_COLLECTION)
        response, seconds = await client.ingest(bank_documents)
        report["bank_ingest_cold"] = throughput(response, seconds)
        response, seconds = await client.ingest(bank_documents)
        report["bank_reingest_unchanged"] = throughput(response, seconds, chunks=0)
        if "quality" in sections:
            report["quality"] = await quality_section(client)
        if "faq" in sections:
            report["faq_banking77"] = await faq_section(client)
        if "speed" in sections:
            report["speed"] = await speed_section(client, bank_documents, scale_chunks)
    finally:
        await client.channel.close()
        await asyncio.to_thread(supervisor.down)
        shutil.rmtree(state, ignore_errors=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "knowledge.json"))
    parser.add_argument("--sections", default="quality,faq,speed")
    parser.add_argument("--scale-chunks", type=int, default=100_000, help="chunks in the scaled collection")
    parser.add_argument("--chunk-words", type=int, default=None, help="override knowledge.chunk_words")
    args = parser.parse_args()
    if not BANKING.is_dir():
        print(f"bench-knowledge: shared data not found at {BANKING}: clone the repo beside ../shared", file=sys.stderr)
        return 2
    from services.kit.offline import enforce_offline

    enforce_offline()
    report = asyncio.run(run_benchmark(args.scale_chunks, set(args.sections.split(",")), args.chunk_words))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {key: value for key, value in report.items()}
    if "quality" in summary:
        summary["quality"] = {k: v for k, v in summary["quality"].items() if k != "per_task"}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

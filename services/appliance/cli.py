"""The `quietline` command: start, inspect and stop the appliance, and place calls against it.

    quietline up [--profile cpu|gpu] [--config FILE] [--foreground]
    quietline down | status [--json]
    quietline call AUDIO.wav | --demo [--json] [--out reply.wav]
    quietline asr AUDIO.wav [--mode digits] [--language xx] [--line pcm16|mulaw|alaw] [--fast] [--json]
    quietline kb ingest PATH [--collection C] | kb search "QUERY" [--collection C] [--k 5] [--json] | kb stats

Every failure prints one line naming the problem and the fix, and exits non-zero:
2 for bad input or configuration, 3 when the appliance is not running or a service is down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from models import ModelError
from services.kit.audio import AudioError
from services.kit.config import ConfigError, QuietLineSettings, load_settings
from services.kit.offline import enforce_offline

DEMO_QUESTION = "Hello, I think I lost my debit card yesterday. What should I do now?"
# The demo caller is the same Piper voice at another speaking rate, so it differs from the bot.
DEMO_CALLER_RATE = 0.85

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _settings(args) -> QuietLineSettings:
    return load_settings(args.config, getattr(args, "profile", None))


def _supervisor(args):
    from services.appliance.supervisor import Supervisor

    return Supervisor(_settings(args), Path(args.config).resolve() if args.config else None)


def command_up(args) -> int:
    from services.appliance.supervisor import ApplianceError

    supervisor = _supervisor(args)
    print(f"starting QuietLine ({supervisor.settings.profile} profile; state in {supervisor.state_dir}) ...",
          file=sys.stderr)
    try:
        endpoints = supervisor.up()
    except ApplianceError as err:
        raise CliError(str(err), EXIT_UNAVAILABLE) from None
    for name, address in endpoints.items():
        print(f"  {name:<10} {address}")
    print(f"logs: {supervisor.log_dir}")
    if args.foreground:
        print("serving in the foreground; Ctrl-C stops the appliance", file=sys.stderr)
        stop = False

        def request_stop(*_):
            nonlocal stop
            stop = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        while not stop:
            signal.pause()
        supervisor.down()
    return 0


def command_down(args) -> int:
    stopped = _supervisor(args).down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def command_status(args) -> int:
    rows = _supervisor(args).status()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            state = "healthy" if row["healthy"] else "DOWN"
            print(f"{row['name']:<10} {state:<8} {row['address']}")
    return 0 if all(row["healthy"] for row in rows) else EXIT_UNAVAILABLE


def _require_services(settings: QuietLineSettings, names: tuple[str, ...]) -> None:
    from services.appliance.supervisor import check_health, service_entries

    down = [e.name for e in service_entries(settings) if e.name in names and not check_health(e)]
    if down:
        raise CliError(
            f"service(s) not reachable: {', '.join(down)}: start the appliance with `quietline up` "
            "(or check `quietline status` and the logs)", EXIT_UNAVAILABLE)


async def synthesize_demo_question(settings: QuietLineSettings, text: str = DEMO_QUESTION):
    """The demo caller's question, spoken by the tts service at the demo caller's rate."""
    import numpy as np

    from quietline.v1 import common_pb2, tts_pb2, tts_pb2_grpc
    from services.kit.channels import open_channel

    rate = settings.gateway.pipeline_sample_rate_hz
    request = tts_pb2.SynthesizeRequest(
        text=text, speaking_rate=DEMO_CALLER_RATE,
        format=common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=rate),
    )
    async with open_channel(settings.tts.endpoint.target, settings.default_rpc_deadline_s) as channel:
        pcm = b"".join([reply.audio async for reply in tts_pb2_grpc.TtsStub(channel).Synthesize(request)])
    speech = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    # A caller pauses a moment before speaking and waits on the line after.
    pause = np.zeros(rate // 2, dtype=np.float32)
    return np.concatenate([pause, speech, pause])


def command_call(args) -> int:
    _quiet_pipecat_logs()
    from services.gateway.call_pipeline import CallTimeoutError, run_recorded_call, write_reply
    from services.kit.audio import read_recording

    settings = _settings(args)
    rate = settings.gateway.pipeline_sample_rate_hz
    if not args.audio and not args.demo:
        raise CliError("give a recording (quietline call AUDIO.wav) or --demo for a synthesised question",
                       EXIT_BAD_INPUT)
    # Read the recording before touching the services, so bad input is reported as such.
    caller_audio = read_recording(args.audio, rate) if args.audio else None
    _require_services(settings, ("asr", "tts", "dialog"))

    async def place_call():
        audio = caller_audio if caller_audio is not None else await synthesize_demo_question(settings)
        return await run_recorded_call(settings, audio, realtime=not args.fast)

    try:
        result = asyncio.run(place_call())
    except CallTimeoutError as err:
        raise CliError(str(err), EXIT_UNAVAILABLE) from None
    out = Path(args.out) if args.out else Path(settings.state_dir).expanduser() / "calls" / f"{result.call_id}.wav"
    write_reply(result, out)
    if args.json:
        print(json.dumps({"call_id": result.call_id, "turns": result.turns, "reply_wav": str(out)}, indent=2))
        return 0
    if not result.turns:
        print("no speech was recognised in the recording")
    for number, turn in enumerate(result.turns, start=1):
        latency = turn["latency_ms"]
        print(f"turn {number}")
        print(f"  caller said : {turn['caller_text']}")
        print(f"  bot answered: {turn['bot_text'] or '(nothing)'}")
        for citation in turn["citations"]:
            print(f"  cited       : {citation['title']} [{citation['document_id']}]")
        print(f"  route       : {turn['route']} ({turn['route_reason']})")
        for action in turn["actions"]:
            print(f"  action      : {action['kind']} {action['target']}")
        print("  latency (ms from end of caller speech): "
              + ", ".join(f"{k}={'-' if v is None else round(v)}" for k, v in latency.items()))
        if turn.get("error"):
            print(f"  error       : {turn['error']}")
    print(f"reply audio : {out}")
    return 0


RECOGNITION_MODES = ("general", "digits", "alphanumeric", "yes_no")
LINE_FORMATS = {"pcm16": (16000, "AUDIO_ENCODING_PCM16"), "pcm16-8k": (8000, "AUDIO_ENCODING_PCM16"),
                "mulaw": (8000, "AUDIO_ENCODING_MULAW"), "alaw": (8000, "AUDIO_ENCODING_ALAW")}


def command_asr(args) -> int:
    """Stream a recording to the asr service as a caller would and print what it heard, and when."""
    import grpc

    from quietline.v1 import asr_pb2, common_pb2
    from services.asr.recording_stream import encode_for_line, stream_recording
    from services.kit.audio import read_recording

    settings = _settings(args)
    samples = read_recording(args.audio, 16000)
    _require_services(settings, ("asr",))
    rate, encoding = LINE_FORMATS[args.line]
    fmt = common_pb2.AudioFormat(encoding=getattr(common_pb2, encoding), sample_rate_hz=rate)
    mode = asr_pb2.RecognitionMode.Value(f"RECOGNITION_MODE_{args.mode.upper()}")
    try:
        result = asyncio.run(stream_recording(
            settings.asr.endpoint.target, encode_for_line(samples, fmt), fmt, mode=mode,
            language=args.language or "", realtime=not args.fast,
        ))
    except grpc.aio.AioRpcError as err:
        raise CliError(f"asr refused the stream: {err.code().name}: {err.details()}", EXIT_BAD_INPUT) from None
    report = result.as_dict()
    if args.json:
        print(json.dumps({key: report[key] for key in ("text", "interims", "end_of_speech_to_final_ms",
                                                       "speech_start_to_first_interim_ms", "language",
                                                       "real_time_factor")}, indent=2))
        return 0
    for interim in result.interims:
        print(f"  {interim['at_ms']:>8.0f} ms  {interim['stable']} | {interim['unstable']}")
    print(f"final       : {result.text or '(nothing recognised)'}")
    print(f"language    : {result.language or '-'}")
    print(f"end of speech to final: {report['end_of_speech_to_final_ms']} ms; "
          f"speech start to first interim: {report['speech_start_to_first_interim_ms']} ms")
    return 0


def _knowledge_call(settings: QuietLineSettings, coroutine):
    """Run one knowledge RPC; its refusal becomes a CliError with the service's own message."""
    import grpc

    try:
        _require_services(settings, ("knowledge",))
    except CliError:
        coroutine.close()  # never started: without this Python warns it was never awaited
        raise
    try:
        return asyncio.run(coroutine)
    except grpc.aio.AioRpcError as err:
        code = EXIT_UNAVAILABLE if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
            else EXIT_BAD_INPUT
        raise CliError(f"knowledge: {err.details()}", code) from None


def command_kb_ingest(args) -> int:
    """Read a file or folder of documents and stream them to the knowledge service."""
    from services.knowledge.client import ingest_documents
    from services.knowledge.documents import DocumentError, read_documents_report

    settings = _settings(args)
    path = Path(args.path)
    collection = args.collection or settings.knowledge.default_collection
    # Everything is read before anything is sent: one bad file means nothing is ingested.
    try:
        report = read_documents_report(path, collection, max_bytes=settings.knowledge.max_document_bytes)
    except DocumentError as err:
        raise CliError(f"{err}\nnothing was ingested", EXIT_BAD_INPUT) from None
    for skipped in report.skipped:
        print(f"skipped (not a supported document type): {skipped}", file=sys.stderr)
    if not report.documents:
        raise CliError(f"{path} holds no documents (.md, .html, .pdf, .txt, .json, .csv): nothing was ingested",
                       EXIT_BAD_INPUT)
    # A folder is the whole truth for its files: documents from files deleted since are removed.
    prune = path.resolve().as_uri().rstrip("/") + "/" if path.is_dir() else ""
    counts = _knowledge_call(settings, ingest_documents(
        settings.knowledge.endpoint.target, report.documents, prune_source_prefix=prune))
    print(f"collection {collection}: {counts.documents_added} added, {counts.documents_updated} updated, "
          f"{counts.documents_unchanged} unchanged, {counts.documents_removed} removed; "
          f"{counts.chunks_written} chunks written")
    return 0


def command_kb_search(args) -> int:
    """Search the knowledge base and print the passages (or --json hits)."""
    from quietline.v1 import knowledge_pb2
    from services.knowledge.client import search_passages

    settings = _settings(args)
    request = knowledge_pb2.SearchRequest(
        query=args.query, top_k=args.k, collections=args.collection or [],
        mode=getattr(knowledge_pb2, f"SEARCH_MODE_{args.mode.upper()}"), distinct_documents=args.distinct,
    )
    passages = _knowledge_call(settings, search_passages(settings.knowledge.endpoint.target, request))
    hits = [
        {"document_id": p.document_id, "title": p.title, "section": p.section, "snippet": p.snippet,
         "score": round(p.score, 6), "collection": p.collection, "version": p.version,
         "snippet_start": p.snippet_start, "snippet_end": p.snippet_end, "source_uri": p.source_uri}
        for p in passages
    ]
    if args.json:
        print(json.dumps(hits, indent=2))
        return 0
    if not hits:
        print("no passages found")
    for rank, hit in enumerate(hits, start=1):
        print(f"{rank}. {hit['title']} [{hit['collection']}/{hit['document_id']} v{hit['version']}]"
              f"{' > ' + hit['section'] if hit['section'] else ''}  score {hit['score']:.4f}")
        print(f"   {hit['snippet']}")
    return 0


def command_kb_stats(args) -> int:
    """Documents, chunks and versions per collection."""
    from google.protobuf.json_format import MessageToDict

    from services.knowledge.client import collection_stats

    settings = _settings(args)
    stats = _knowledge_call(settings, collection_stats(settings.knowledge.endpoint.target))
    if args.json:
        print(json.dumps(MessageToDict(stats, always_print_fields_with_no_presence=True,
                                       preserving_proto_field_name=True), indent=2))
        return 0
    print(f"embedding model {stats.embedding_model}, {stats.chunk_words} words per chunk")
    print(f"{'collection':<24} {'documents':>9} {'chunks':>8} {'versions':>8} {'removed':>7}  last ingested")
    for row in stats.collections:
        print(f"{row.collection:<24} {row.documents:>9} {row.chunks:>8} {row.versions:>8} "
              f"{row.removed_documents:>7}  {row.last_ingested_at or '-'}")
    return 0


def command_eval_retail(args) -> int:
    """Play tau-bench retail tasks as text calls against the running dialog; print the summary and rows."""
    from services.appliance.supervisor import appliance_dsn
    from services.dialog.evaluation import evaluate_retail, load_retail_tasks
    from services.dialog.tools.backoffice import load_retail

    settings = _settings(args)
    try:
        tasks = load_retail_tasks(args.tasks)
    except ValueError as err:
        raise CliError(str(err), EXIT_BAD_INPUT) from None
    tasks = tasks[: args.limit] if args.limit else tasks
    _require_services(settings, ("dialog",))
    try:
        dsn = appliance_dsn(settings, purpose="evaluate against")
    except ConfigError as err:
        raise CliError(str(err), EXIT_UNAVAILABLE) from None
    export = Path(args.backoffice) if args.backoffice else Path(args.tasks).resolve().parent / "data"
    if not (export / "users.json").is_file():
        raise CliError(f"no retail back-office export at {export} (users.json, orders.json, products.json): pass "
                       "--backoffice FOLDER", EXIT_BAD_INPUT)
    asyncio.run(load_retail(dsn, export))

    def progress(row: dict) -> None:
        if not args.json:
            mark = "ok  " if row["success"] else "FAIL"
            print(f"{mark} task {row['task']:>3}: {row['turns']:>2} turns, {row['ended']}, "
                  f"tools {row['dialog_tool_calls']} (gold {row['gold_actions']})", flush=True)

    report = asyncio.run(evaluate_retail(tasks, settings.dialog.endpoint.target, dsn, progress))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(json.dumps(report["summary"], indent=2))
    print("(the back office now holds the evaluation export; `python -m services.dialog.tools.backoffice "
          "load-demo` puts the demo shop back)", file=sys.stderr)
    return 0


def command_eval_banking(args) -> int:
    """Play tau2-bench banking tasks as text calls on the running dialog's bank line; print the summary."""
    from services.appliance.supervisor import appliance_dsn
    from services.dialog.evaluation import evaluate_banking, load_banking_tasks

    settings = _settings(args)
    try:
        tasks = load_banking_tasks(args.tasks)
    except ValueError as err:
        raise CliError(str(err), EXIT_BAD_INPUT) from None
    tasks = tasks[: args.limit] if args.limit else tasks
    db_json = Path(args.db) if args.db else Path(args.tasks).resolve().parent / "db.json"
    if not db_json.is_file():
        raise CliError(f"no bank export at {db_json}: pass --db PATH to the bank's db.json", EXIT_BAD_INPUT)
    _require_services(settings, ("dialog",))
    try:
        dsn = appliance_dsn(settings, purpose="evaluate against")
    except ConfigError as err:
        raise CliError(str(err), EXIT_UNAVAILABLE) from None

    def progress(row: dict) -> None:
        if not args.json:
            mark = "--  " if not row["scored"] else ("ok  " if row["success"] else "FAIL")
            print(f"{mark} {row['task']}: {row['turns']:>2} turns, {row['ended']}, actions {row['dialog_actions']} "
                  f"(gold {row['gold_actions']}){' LEAK ' + str(row['leaks']) if row['leaks'] else ''}", flush=True)

    report = asyncio.run(evaluate_banking(tasks, settings.dialog.endpoint.target, dsn, db_json, progress))
    print(json.dumps(report if args.json else report["summary"], indent=2))
    return 0


def command_audit_verify(args) -> int:
    """Recompute the dialog's hash-chained audit; print the verdict as JSON (exit 1 when broken)."""
    from services.dialog.records import main as records_main

    argv = ["verify", "--schema", args.schema]
    argv += ["--config", args.config] if args.config else []
    argv += ["--dsn", args.dsn] if args.dsn else []
    return records_main(argv)


def _quiet_pipecat_logs() -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def _passage_count(value: str) -> int:
    """--k: a whole number of passages, at least 1 (the request field is an unsigned 32-bit number)."""
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not 1 <= count < 2**32:
        raise argparse.ArgumentTypeError(f"{value} passages: ask for at least 1")
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quietline", description="QuietLine voice contact-center appliance")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p):
        p.add_argument("--config", help="operator YAML file over the profile's defaults")
        p.add_argument("--profile", choices=["cpu", "gpu"], help="model profile (default cpu)")
        return p

    up = with_config(sub.add_parser("up", help="start every service and wait until healthy"))
    up.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops the appliance")
    up.set_defaults(handler=command_up)
    with_config(sub.add_parser("down", help="stop every service")).set_defaults(handler=command_down)
    status = with_config(sub.add_parser("status", help="health of every service"))
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=command_status)
    call = with_config(sub.add_parser("call", help="place a call with a recording as the caller"))
    call.add_argument("audio", nargs="?", help="caller recording (WAV/FLAC/OGG, any sample rate)")
    call.add_argument("--demo", action="store_true", help="synthesise a demo caller question instead")
    call.add_argument("--json", action="store_true", help="print the turns as JSON")
    call.add_argument("--out", help="where to write the bot's reply audio (WAV)")
    call.add_argument("--fast", action="store_true", help="send the recording faster than real time")
    call.set_defaults(handler=command_call)
    asr = with_config(sub.add_parser("asr", help="stream a recording to the asr service and print what it heard"))
    asr.add_argument("audio", help="recording (WAV/FLAC/OGG, any sample rate)")
    asr.add_argument("--mode", choices=RECOGNITION_MODES, default="general", help="what the caller is expected to say")
    asr.add_argument("--language", help="language hint (BCP-47, e.g. de); none means the configured default")
    asr.add_argument("--line", choices=sorted(LINE_FORMATS), default="pcm16", help="how the audio is carried")
    asr.add_argument("--fast", action="store_true", help="send as fast as possible instead of in real time")
    asr.add_argument("--json", action="store_true")
    asr.set_defaults(handler=command_asr)
    kb = sub.add_parser("kb", help="the knowledge base: ingest documents, search, stats")
    kb_sub = kb.add_subparsers(dest="kb_command", required=True)
    ingest = with_config(kb_sub.add_parser("ingest", help="add or update documents from a file or folder"))
    ingest.add_argument("path", help="a document or a folder (.md .html .pdf .txt .json .csv FAQ)")
    ingest.add_argument("--collection", help="collection to ingest into (default: knowledge.default_collection)")
    ingest.set_defaults(handler=command_kb_ingest)
    search = with_config(kb_sub.add_parser("search", help="find passages with citations"))
    search.add_argument("query")
    search.add_argument("--collection", action="append", help="collection to search (repeatable)")
    search.add_argument("--k", type=_passage_count, default=5, help="passages wanted (default 5)")
    search.add_argument("--mode", choices=["hybrid", "vector", "lexical"], default="hybrid")
    search.add_argument("--distinct", action="store_true", help="at most one passage per document")
    search.add_argument("--json", action="store_true")
    search.set_defaults(handler=command_kb_search)
    stats = with_config(kb_sub.add_parser("stats", help="documents, chunks and versions per collection"))
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(handler=command_kb_stats)
    evaluation = sub.add_parser("eval", help="play benchmark tasks as text calls against the running dialog")
    eval_sub = evaluation.add_subparsers(dest="eval_command", required=True)
    retail = with_config(eval_sub.add_parser("retail", help="tau-bench retail tasks (instruction + gold actions)"))
    retail.add_argument("tasks", help="task file, e.g. ../shared/data/retail/tasks_dev.json")
    retail.add_argument("--backoffice", help="the retail export to load first (default: the task file's data/ folder)")
    retail.add_argument("--limit", type=int, help="only the first N tasks")
    retail.add_argument("--json", action="store_true", help="print the summary and one row per task as JSON")
    retail.set_defaults(handler=command_eval_retail)
    banking = with_config(eval_sub.add_parser("banking", help="tau2-bench banking tasks (scenario + gold actions), "
                                                               "played on the dialog's bank line"))
    banking.add_argument("tasks", help="task folder, e.g. ../shared/data/kb/banking/tasks")
    banking.add_argument("--db", help="the bank's db.json, loaded before each task (default: beside the task folder)")
    banking.add_argument("--limit", type=int, help="only the first N tasks")
    banking.add_argument("--json", action="store_true", help="print the summary and one row per task as JSON")
    banking.set_defaults(handler=command_eval_banking)
    audit = sub.add_parser("audit", help="the dialog's append-only, hash-chained audit")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = with_config(audit_sub.add_parser("verify", help="check every audit row's hash and link"))
    verify.add_argument("--dsn", help="PostgreSQL connection string (default: the appliance's database)")
    verify.add_argument("--schema", default="dialog", help="schema holding the audit table (default dialog)")
    verify.set_defaults(handler=command_audit_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    enforce_offline()
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CliError as err:
        print(f"quietline: {err}", file=sys.stderr)
        return err.code
    except (ConfigError, AudioError, ModelError) as err:
        print(f"quietline: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

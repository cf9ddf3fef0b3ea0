"""The dialog service as `quietline up` runs it: real knowledge service on a real PostgreSQL, the real
llama.cpp server with Gemma 3 270M, real gRPC. The turn logic's pure parts (groundedness guard,
extractive selection) are tested on handwritten passages.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import grpc
import httpx
import pytest
import yaml
from conftest import REPO_ROOT, free_port, start_service, write_config

from quietline.v1 import common_pb2, dialog_pb2, dialog_pb2_grpc, knowledge_pb2
from services.dialog.answering import (
    NO_SPEECH_PROMPT,
    check_grounding,
    content_terms,
    extractive_answer,
    passage_sentences,
)
from services.kit.channels import open_channel

SAMPLE_KB = REPO_ROOT / "services" / "knowledge" / "sample_kb"
LOST_CARD_QUESTION = "I lost my debit card, what should I do?"


@pytest.fixture(scope="module")
def dialog_config(service_config, state_dir):
    """The per-service test config with this module's own free ports: other test files running at the
    same time on this machine (a developer's parallel runs) hold the shared per-service ports."""
    config = yaml.safe_load(service_config.read_text())
    config["llm"]["port"] = free_port()
    for name in ("knowledge", "dialog"):
        config[name]["endpoint"] = {"port": free_port(), "metrics_port": free_port()}
    # Routes, not speed, are under test here: on a busy 2-core box a search can take seconds.
    config["dialog"]["search_timeout_s"] = 10.0
    # A folder of its own, so the services' logs (written beside the config) are this module's alone.
    folder = state_dir / "dialog-test"
    folder.mkdir(exist_ok=True)
    return write_config(folder / "services.yaml", config)


@pytest.fixture(scope="module")
def knowledge_service(dialog_config, database_dsn):
    service = start_service("knowledge", dialog_config, extra_env={"QUIETLINE_DATABASE__DSN": database_dsn})
    yield service
    service.stop()


@pytest.fixture(scope="module")
def llm_server(dialog_config):
    """The real LLM server (`python -m services.llm`), ready when /v1/models answers 200."""
    server = start_service("llm", dialog_config)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dialog_service(dialog_config, knowledge_service, llm_server, database_dsn):
    service = start_service("dialog", dialog_config, extra_env={"QUIETLINE_DATABASE__DSN": database_dsn})
    yield service
    assert service.stop() == 0, service.log()


@pytest.fixture(scope="module")
async def dialog(dialog_service):
    channel = open_channel(dialog_service.target, default_deadline_s=60.0)
    yield dialog_pb2_grpc.DialogStub(channel)
    await channel.close()


@pytest.fixture(scope="module")
def dialog_without_knowledge(dialog_config, state_dir, database_dsn):
    """A second dialog whose knowledge endpoint is a port nothing listens on."""
    config = yaml.safe_load(dialog_config.read_text())
    config["knowledge"] = {"endpoint": {"port": free_port(), "metrics_port": free_port()}}
    config["dialog"] = {"endpoint": {"port": free_port(), "metrics_port": free_port()}}
    folder = state_dir / "dialog-no-knowledge"
    folder.mkdir(exist_ok=True)
    service = start_service("dialog", write_config(folder / "services.yaml", config),
                            extra_env={"QUIETLINE_DATABASE__DSN": database_dsn})
    yield service
    assert service.stop() == 0, service.log()


def turn_request(transcript: str, call_id: str, turn: int = 1) -> dialog_pb2.TurnRequest:
    return dialog_pb2.TurnRequest(
        call=common_pb2.CallRef(call_id=call_id, turn=turn), transcript=transcript, asr_confidence=0.9,
        context=dialog_pb2.CallContext(service_line="retail-banking", language="en-GB"),
    )


async def turn(stub, request, timeout: float = 30.0) -> list[dialog_pb2.TurnEvent]:
    return [event async for event in stub.Turn(request, timeout=timeout)]


def assert_well_formed(events: list[dialog_pb2.TurnEvent]) -> None:
    """One route decision, preceded by cached prompts only (the disclosure, an acknowledgement), and
    end_of_turn on the last event and on no other."""
    assert events, "the turn produced no events"
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds.count("route") == 1, events
    assert all(event.say.cached_prompt for event in events[:kinds.index("route")]), events
    assert [event.end_of_turn for event in events] == [False] * (len(events) - 1) + [True], events


def route_of(events: list[dialog_pb2.TurnEvent]) -> dialog_pb2.RouteDecision:
    return next(event.route for event in events if event.WhichOneof("event") == "route")


def normalised(text: str) -> str:
    return " ".join(text.split())


def sample_kb_sentences(document_id: str) -> set[str]:
    return {normalised(s) for s in passage_sentences((SAMPLE_KB / f"{document_id}.md").read_text())}


async def test_lost_card_question_gets_a_cited_answer(dialog, dialog_service):
    events = await turn(dialog, turn_request(LOST_CARD_QUESTION, "test-lost-card"))

    assert_well_formed(events)
    route = route_of(events)
    assert route.route in ("llm", "faq"), route
    # The call's first turn starts with the disclosure (a cached prompt), then the answer.
    disclosure, *says = [event.say for event in events if event.WhichOneof("event") == "say"]
    assert disclosure.cached_prompt and "automated assistant" in disclosure.text
    assert says and all(say.text.strip() for say in says), events
    assert any("card" in citation.title.lower() for say in says for citation in say.citations), says
    if route.route == "faq":
        # The LLM was not used or not trusted (reason names why); the answer is the KB's own words.
        assert route.reason.startswith(("llm", "no time")), route
        for say in says:
            (citation,) = say.citations
            assert normalised(say.text) in sample_kb_sentences(citation.document_id), say
        assert len(says) <= 2
    # Privacy: the caller's words never reach the log.
    assert "lost my debit card" not in dialog_service.log()
    assert '"call_id": "test-lost-card"' in dialog_service.log()


async def test_empty_transcript_asks_the_caller_to_repeat(dialog):
    events = await turn(dialog, turn_request("   ", "test-empty"))

    assert_well_formed(events)
    assert (route_of(events).route, route_of(events).reason) == ("control", "no speech")
    assert events[-1].say.text == NO_SPEECH_PROMPT and "did not catch" in events[-1].say.text
    assert events[-1].say.cached_prompt


async def test_question_outside_the_knowledge_base_is_clarified_then_handed_to_a_colleague(dialog):
    for number in (1, 2):
        events = await turn(dialog, turn_request("Who won the football yesterday?", "test-unknown", number))
        assert_well_formed(events)
        assert route_of(events).route == "clarify", events[0]
        assert "What would you like to do?" in events[-1].say.text
        assert not any(event.WhichOneof("event") == "action" for event in events)
    events = await turn(dialog, turn_request("Who won the football yesterday?", "test-unknown", 3))

    assert_well_formed(events)
    assert (route_of(events).route, route_of(events).reason) == ("human", "repeated no-match"), events[0]
    action = events[-1].action
    assert action.kind == dialog_pb2.Action.KIND_TRANSFER
    briefing = json.loads(action.briefing)
    assert briefing["reason"] == "repeated no-match" and briefing["call_id"] == "test-unknown"
    assert "football" in briefing["caller_said_last"] and briefing["verified_customer"] is None
    assert briefing["routes_tried"] == ["clarify", "clarify"]  # what was tried before handing over


async def test_short_deadline_never_hangs(dialog):
    started = time.perf_counter()
    try:
        events = await turn(dialog, turn_request(LOST_CARD_QUESTION, "test-deadline"), timeout=0.3)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    else:
        # Answered in time: the whole turn, spoken without waiting for the LLM.
        assert_well_formed(events)
        assert any(event.WhichOneof("event") == "say" for event in events)
    assert time.perf_counter() - started < 1.5


async def test_cancelled_turn_is_stopped_and_the_next_turn_is_answered(dialog, dialog_service):
    call = dialog.Turn(turn_request("How long does a replacement card take to arrive?", "test-cancel"))
    await asyncio.sleep(0.4)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    deadline = time.monotonic() + 5.0
    while not any('"msg": "turn stopped"' in line and '"call_id": "test-cancel"' in line
                  for line in dialog_service.log().splitlines()):
        assert time.monotonic() < deadline, "the dialog did not stop the cancelled turn:\n" + dialog_service.log()
        await asyncio.sleep(0.1)

    events = await turn(dialog, turn_request("   ", "test-after-cancel"))
    assert_well_formed(events)


def test_turn_latencies_are_exported(dialog_service):
    """The turns above were recorded in the stage histogram the dashboard reads."""
    metrics = httpx.get(f"http://127.0.0.1:{dialog_service.entry.metrics_port}/metrics", timeout=5.0).text
    for stage in ("first_say", "turn"):
        found = re.search(
            rf'quietline_stage_duration_seconds_count{{service="dialog",stage="{stage}"}} (\S+)', metrics
        )
        assert found and float(found.group(1)) >= 3, stage


async def test_missing_call_id_is_invalid_argument(dialog):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await turn(dialog, turn_request("hello", ""))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "call_id" in caught.value.details()


async def test_knowledge_down_ends_with_apology_and_transfer(dialog_without_knowledge):
    channel = open_channel(dialog_without_knowledge.target, default_deadline_s=30.0)
    try:
        events = await turn(dialog_pb2_grpc.DialogStub(channel), turn_request(LOST_CARD_QUESTION, "test-no-kb"))
    finally:
        await channel.close()

    assert_well_formed(events)
    assert route_of(events).route == "fallback"
    assert "knowledge" in route_of(events).reason and "UNAVAILABLE" in route_of(events).reason, events[0]
    apology = [event.say.text for event in events if event.WhichOneof("event") == "say"][1]  # after the disclosure
    assert apology.startswith("Sorry") and "colleague" in apology
    action = events[-1].action
    assert action.kind == dialog_pb2.Action.KIND_TRANSFER and action.target
    briefing = json.loads(action.briefing)
    assert "lost my debit card" in briefing["caller_said_last"] and briefing["call_id"] == "test-no-kb"
    assert dialog_without_knowledge.process.poll() is None


# -- pure turn logic on handwritten passages -----------------------------------------------------
PASSAGES = [
    knowledge_pb2.Passage(
        document_id="cards", title="Lost or stolen card", section="Cards > Lost or stolen card", score=0.9,
        text=(
            "## Lost or stolen card\n\n"
            "Our offices are open on weekdays.\n"
            "- **Freeze** the card at once in the mobile app.\n"
            "- Call the 24-hour card line on 0800 555 0123 to cancel it.\n"
            "A replacement card arrives within 5 working days. Your PIN stays the same.\n"
        ),
    ),
    knowledge_pb2.Passage(
        document_id="fees", title="Overdraft fees", section="Fees", score=0.4,
        text="An arranged overdraft costs 39.9 percent a year. There is no fee for the first 50 pounds.",
    ),
]


def test_grounding_guard_accepts_supported_sentences_and_cites_the_source():
    verdict = check_grounding("Call the 24-hour card line on 0800 555 0123 to cancel your card [1].", PASSAGES,
                              "I lost my card", 0.6, answer_document="cards")
    assert verdict.grounded and verdict.overlap == 1.0 and verdict.passage_indexes == (0,)
    verdict = check_grounding("The first 50 pounds of overdraft cost no fee.", PASSAGES, "overdraft fee", 0.6)
    assert verdict.grounded and verdict.passage_indexes == (1,)


def test_grounding_guard_rejects_off_topic_and_unsupported_numbers():
    verdict = check_grounding("There is no fee for the first 50 pounds.", PASSAGES, "I lost my card", 0.6,
                              answer_document="cards")
    assert (verdict.grounded, verdict.reason) == (False, "off topic")
    verdict = check_grounding("A replacement card arrives within 7 working days.", PASSAGES, "new card", 0.6)
    assert (verdict.grounded, verdict.reason) == (False, "unsupported number")


@pytest.mark.parametrize(
    ("sentence", "reason"),
    [
        ("We will post you a gift voucher and a new phone tomorrow.", "low overlap"),
        # Every word is in some passage, but no one passage says it.
        ("Freeze the overdraft fee for 50 pounds in the mobile app.", "low overlap"),
        ("Did you lose your card in a shop?", "question back"),
        ("Answer: freeze the card.", "prompt echo"),
        ("Using only the facts in the numbered passages, freeze the card.", "prompt echo"),
        ("[1] Lost or stolen card > Cards > Lost or stolen card\nFreeze the card at once.", "prompt echo"),
        ("Lost or stolen card > Cards > Lost or stolen card Freeze the card at once.", "prompt echo"),
        ("<start_of_turn>model Freeze the card.", "template tokens"),
        ("I lost my card.", "question echo"),
        ("Yes, sure.", "no content words"),
    ],
)
def test_grounding_guard_rejects(sentence, reason):
    verdict = check_grounding(sentence, PASSAGES, "I lost my card", 0.6)
    assert not verdict.grounded and verdict.reason == reason, verdict


def test_content_terms_strip_stopwords_and_suffixes():
    assert content_terms("Cards were BLOCKED; we're blocking the card") == {"card", "block"}
    assert content_terms("replacement replaces replaced") == {"replacement", "replac"}


def test_extractive_answer_picks_the_best_sentences_without_markup():
    answer = extractive_answer("How long does a replacement card take to arrive?", PASSAGES, 2)
    assert answer is not None and answer.passage.document_id == "cards"
    assert answer.sentences == ["A replacement card arrives within 5 working days."]

    answer = extractive_answer("My card was stolen, how do I freeze or cancel it?", PASSAGES, 2)
    assert answer.sentences == [
        "Freeze the card at once in the mobile app.",
        "Call the 24-hour card line on 0800 555 0123 to cancel it.",
    ]
    assert not any(re.search(r"[#*]", sentence) for sentence in answer.sentences)

    assert extractive_answer("Who won the football yesterday?", PASSAGES, 2) is None
    assert len(extractive_answer("card freeze cancel replacement", PASSAGES, 1).sentences) == 1


@pytest.fixture(scope="module")
def dialog_with_line_collections(dialog_config, knowledge_service, state_dir, database_dsn):
    """A dialog whose bank line is answered from a collection of its own, which holds nothing."""
    config = yaml.safe_load(dialog_config.read_text())
    config["dialog"] = {"endpoint": {"port": free_port(), "metrics_port": free_port()}, "search_timeout_s": 10.0,
                        "llm_deadline_s": 0.01, "line_collections": {"bank": ["bank-kb-not-loaded"]}}
    folder = state_dir / "dialog-line-collections"
    folder.mkdir(exist_ok=True)
    service = start_service("dialog", write_config(folder / "services.yaml", config),
                            extra_env={"QUIETLINE_DATABASE__DSN": database_dsn})
    yield service
    assert service.stop() == 0, service.log()


async def test_each_service_line_is_answered_from_its_own_collections(dialog_with_line_collections):
    channel = open_channel(dialog_with_line_collections.target, default_deadline_s=60.0)
    stub = dialog_pb2_grpc.DialogStub(channel)
    try:
        default_line = await turn(stub, turn_request(LOST_CARD_QUESTION, "test-line-default"))
        bank_request = turn_request(LOST_CARD_QUESTION, "test-line-bank")
        bank_request.context.service_line = "bank"
        bank_line = await turn(stub, bank_request)
    finally:
        await channel.close()
    # The default line searches dialog.knowledge_collections (the sample KB): a cited answer.
    assert route_of(default_line).route in ("faq", "llm"), default_line
    assert any(event.say.citations for event in default_line if event.WhichOneof("event") == "say")
    # The bank line searches only its own collection, which is empty: nothing from the sample KB.
    assert route_of(bank_line).route not in ("faq", "llm"), bank_line
    assert not any(event.say.citations for event in bank_line if event.WhichOneof("event") == "say")


@pytest.fixture(scope="module")
def large_llm_server(dialog_config, state_dir):
    """A second llama.cpp server standing for the large tier (the same small model: the tier choice is
    under test, not the model)."""
    config = yaml.safe_load(dialog_config.read_text())
    config["llm"]["port"] = free_port()
    folder = state_dir / "dialog-large-tier"
    folder.mkdir(exist_ok=True)
    server = start_service("llm", write_config(folder / "services.yaml", config))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dialog_with_tiers(dialog_config, knowledge_service, llm_server, large_llm_server, state_dir, database_dsn):
    config = yaml.safe_load(dialog_config.read_text())
    config["llm"]["tiers"] = {"large": {"port": large_llm_server.entry.port}}
    config["dialog"] = {"endpoint": {"port": free_port(), "metrics_port": free_port()}, "search_timeout_s": 10.0,
                        "llm_deadline_s": 40.0, "complex_tier": "large", "complex_turn_words": 12,
                        "complex_tier_min_budget_s": 20.0}
    folder = state_dir / "dialog-tiers"
    folder.mkdir(exist_ok=True)
    service = start_service("dialog", write_config(folder / "services.yaml", config),
                            extra_env={"QUIETLINE_DATABASE__DSN": database_dsn})
    yield service
    assert service.stop() == 0, service.log()


def prompt_tokens(server) -> float:
    """llama.cpp's prompt tokens processed so far (its /metrics counter)."""
    text = httpx.get(f"http://{server.target}/metrics", timeout=10.0).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("llamacpp:prompt_tokens_total"))


async def test_complex_turns_go_to_the_large_tier_when_the_budget_allows(dialog_with_tiers, llm_server,
                                                                         large_llm_server):
    complex_question = ("I lost my debit card on holiday and I also want to know the difference between "
                        "freezing it and cancelling it, which one is better?")
    channel = open_channel(dialog_with_tiers.target, default_deadline_s=90.0)
    stub = dialog_pb2_grpc.DialogStub(channel)
    used = []
    try:
        for question, timeout in ((LOST_CARD_QUESTION, 90.0), (complex_question, 90.0), (complex_question, 15.0)):
            before = prompt_tokens(llm_server), prompt_tokens(large_llm_server)
            events = await turn(stub, turn_request(question, f"test-tier-{len(used)}"), timeout=timeout)
            after = prompt_tokens(llm_server), prompt_tokens(large_llm_server)
            used.append(("fast" if after[0] > before[0] else "") + ("large" if after[1] > before[1] else ""))
            decision = route_of(events)
            if decision.route == "llm":  # the reason names the tier and why (a faq answer names why not)
                assert f"tier {used[-1]}" in decision.reason, decision
    finally:
        await channel.close()
    # A short question: the fast tier. A comparison with time to spare: the large tier. The same
    # comparison with 15 s left (under complex_tier_min_budget_s): the fast tier again.
    assert used == ["fast", "large", "fast"]

"""The one client of the LLM server: async, streaming, deadline-bound, OpenAI-compatible HTTP.

Both profiles' servers (llama.cpp on `cpu`, vLLM on `gpu`) speak the OpenAI chat-completions API, so
the dialog uses this client for either. Every failure surfaces as `LlmFailure` with a `kind` the
dialog can route on (speak the extractive fallback, an apology, or escalate) and a message naming the
fix; messages and logs never carry the prompt or the answer (caller data).

Use it as

    client = LlmClient.from_settings(settings.llm)
    async with contextlib.aclosing(client.stream_chat(messages, max_tokens=60, temperature=0.0,
                                                      deadline_s=2.0)) as deltas:
        async for text in deltas:
            ...

`aclosing` closes the HTTP stream the moment the loop is left, so the server stops generating at
once; without it the stream is closed when the generator is garbage-collected. Cancelling the task
that iterates closes it too (a caller who hangs up or barges in).

Tool calls and route decisions use `complete_json(messages, schema, ...)`: the server constrains its
decoding to the JSON schema (llama.cpp through a grammar, vLLM through its structured-output backend),
and the client validates the result again, so even the small CPU model yields a valid object or a typed
failure ("invalid_output"), never a half-parsed one.

Retries are bounded and only where nothing can have been generated: a refused connection or a server
that answers "not ready" (HTTP 429/502/503/504) before the stream starts. Once a stream has begun it is
never repeated (the caller may have heard part of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import jsonschema
import openai
from openai import AsyncOpenAI
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from services.kit.config import LlmEndpoint
from services.kit.metrics import ERRORS, STAGE_LATENCY

FAILURE_KINDS = ("unavailable", "timeout", "bad_response", "context_overflow", "invalid_output")

# Requests for live turns go before background work (summaries, briefings) in vLLM's priority
# scheduler (the launch profile turns it on); lower runs first. llama.cpp serves requests in arrival order.
REQUEST_PRIORITIES = {"turn": 0, "background": 10}

# Attempts to open a stream when the server refused it or was not ready; waits grow from 0.1 s.
CONNECT_ATTEMPTS = 3

# The openai and httpx loggers would log every request line, and at DEBUG level (OPENAI_LOG=debug)
# the request body, i.e. the caller's words. Keep them to warnings whatever the root level is.
logging.getLogger("openai").setLevel(logging.WARNING)
logging.getLogger("httpx").setLevel(logging.WARNING)

log = logging.getLogger("quietline.llm.client")

# llama.cpp and vLLM's renderer: "maximum context length is N"; vLLM's engine: "maximum model length of N".
_CONTEXT_SIZE = re.compile(r"maximum (?:context length is|model length of) (\d+)")


class LlmFailure(Exception):
    """The LLM gave no usable answer. `kind` is one of FAILURE_KINDS; the message names the fix.

    `retryable` marks failures where the server cannot have started generating (safe to send again).
    """

    def __init__(self, kind: str, message: str, *, retryable: bool = False) -> None:
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown LlmFailure kind {kind!r}: use one of {', '.join(FAILURE_KINDS)}")
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable


def merge_system_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Move system messages' text to the start of the first user message.

    Gemma has no system role (llama.cpp's "gemma" chat format silently drops system messages) and
    Mistral's template folds it into a user turn too; merging here keeps the instructions on every
    profile. Messages whose content is not plain text are passed through unchanged.
    """
    system_texts = [m["content"] for m in messages if m.get("role") == "system" and isinstance(m.get("content"), str)]
    if not system_texts:
        return [dict(m) for m in messages]
    instructions = "\n\n".join(text for text in system_texts if text)
    merged: list[dict[str, Any]] = []
    placed = False
    for message in messages:
        if message.get("role") == "system" and isinstance(message.get("content"), str):
            continue
        if not placed and message.get("role") == "user" and isinstance(message.get("content"), str):
            if instructions:
                message = {**message, "content": f"{instructions}\n\n{message['content']}"}
            placed = True
        merged.append(dict(message))
    if not placed and instructions:
        merged.insert(0, {"role": "user", "content": instructions})
    return merged


class LlmClient:
    """Async client of the OpenAI-compatible LLM server at `base_url` serving `model`.

    One instance serves every concurrent call of a process (it pools HTTP connections); close it with
    `aclose()` at shutdown.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        server: str = "llama_cpp",
        connect_timeout_s: float = 2.0,
        connect_attempts: int = CONNECT_ATTEMPTS,
        merge_system_prompt: bool = True,
        metrics_service: str = "dialog",
    ) -> None:
        if server not in ("llama_cpp", "vllm"):
            raise ValueError(f"unknown LLM server kind {server!r}: use llama_cpp or vllm")
        self.base_url = base_url
        self.model = model
        self.server = server
        self.merge_system_prompt = merge_system_prompt
        self.metrics_service = metrics_service
        self.connect_attempts = connect_attempts
        self._connect_timeout_s = connect_timeout_s
        # No read timeout here: each request's deadline bounds the whole answer instead.
        # trust_env=False: proxy variables must never route caller text off this host.
        self._http = httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(None, connect=connect_timeout_s))
        self._openai = AsyncOpenAI(base_url=base_url, api_key="not-used", max_retries=0, http_client=self._http)

    @classmethod
    def from_settings(cls, endpoint: LlmEndpoint, **options: Any) -> LlmClient:
        """A client for the server `endpoint` describes (`settings.llm` for the default tier)."""
        return cls(endpoint.base_url, endpoint.model, server=endpoint.server, **options)

    async def aclose(self) -> None:
        """Close the pooled HTTP connections."""
        await self._openai.close()
        await self._http.aclose()

    async def __aenter__(self) -> LlmClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def stream_chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        temperature: float,
        deadline_s: float,
        stop: list[str] | None = None,
        priority: str = "turn",
        json_schema: dict | None = None,
    ) -> AsyncIterator[str]:
        """Yield the answer's text deltas as the server generates them.

        The whole answer must arrive within `deadline_s` (time the caller spends between deltas
        counts too), else LlmFailure("timeout"). Raises LlmFailure for every other failure.
        `priority` is "turn" (a caller is waiting) or "background"; `json_schema` constrains decoding.
        """
        request = self._request(messages, max_tokens, temperature, stop, priority, json_schema)
        try:
            async with contextlib.aclosing(self._stream(request, deadline_s=deadline_s)) as deltas:
                async for text in deltas:
                    yield text
        except LlmFailure as failure:
            ERRORS.labels(self.metrics_service, f"llm_{failure.kind}").inc()
            log.warning("llm request failed", extra={"kind": failure.kind, "model": self.model})
            raise

    async def complete_chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        temperature: float,
        deadline_s: float,
        stop: list[str] | None = None,
        priority: str = "turn",
    ) -> str:
        """The whole answer as one string; same deadline and failures as `stream_chat`."""
        return await self._complete(messages, max_tokens=max_tokens, temperature=temperature, deadline_s=deadline_s,
                                    stop=stop, priority=priority)

    async def complete_json(
        self,
        messages: list[dict],
        schema: dict,
        *,
        max_tokens: int,
        deadline_s: float,
        priority: str = "turn",
    ) -> Any:
        """A JSON value valid against `schema`, decoded under the server's schema constraint (greedy).

        Raises LlmFailure("invalid_output") when the text is not JSON or does not match the schema (the
        answer was cut off by `max_tokens`, or the server could not express the schema as a constraint),
        and the failures of `stream_chat` otherwise. The message never quotes the model's output.
        """
        jsonschema.validators.validator_for(schema).check_schema(schema)  # a bad schema is a caller bug
        text = await self._complete(messages, max_tokens=max_tokens, temperature=0.0, deadline_s=deadline_s,
                                    priority=priority, json_schema=schema)
        try:
            value = json.loads(text)
            jsonschema.validate(value, schema)
        except (json.JSONDecodeError, jsonschema.ValidationError) as err:
            problem = "is not complete JSON" if isinstance(err, json.JSONDecodeError) else (
                f"does not match the schema at '{'/'.join(map(str, err.absolute_path)) or '(root)'}' ({err.validator})")
            failure = LlmFailure(
                "invalid_output",
                f"the LLM's structured answer {problem}: raise max_tokens for this call (it may have been cut "
                "off), or simplify the schema",
            )
            ERRORS.labels(self.metrics_service, "llm_invalid_output").inc()
            log.warning("llm output invalid", extra={"kind": failure.kind, "model": self.model})
            raise failure from None
        return value

    async def _complete(self, messages: list[dict], **options: Any) -> str:
        parts = []
        async with contextlib.aclosing(self.stream_chat(messages, **options)) as deltas:
            async for text in deltas:
                parts.append(text)
        return "".join(parts)

    # -- internals -------------------------------------------------------------------------------
    def _request(self, messages: list[dict], max_tokens: int, temperature: float, stop: list[str] | None,
                 priority: str, json_schema: dict | None) -> dict[str, Any]:
        """The chat-completions request in the dialect of this client's server."""
        if priority not in REQUEST_PRIORITIES:
            raise ValueError(f"unknown request priority {priority!r}: use one of {', '.join(REQUEST_PRIORITIES)}")
        request: dict[str, Any] = {
            "model": self.model,
            "messages": merge_system_messages(messages) if self.merge_system_prompt else list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if stop:
            request["stop"] = stop
        extra: dict[str, Any] = {}
        if self.server == "vllm":
            # Only vLLM schedules by priority (any value but 0 is refused without --scheduling-policy priority).
            extra["priority"] = REQUEST_PRIORITIES[priority]
        if json_schema is not None:
            # The OpenAI shape for vLLM; llama-cpp-python takes the schema inside a "json_object" format.
            extra["response_format"] = (
                {"type": "json_schema", "json_schema": {"name": "answer", "schema": json_schema, "strict": True}}
                if self.server == "vllm" else {"type": "json_object", "schema": json_schema}
            )
        if extra:
            request["extra_body"] = extra
        return request

    async def _open_stream(self, request: dict[str, Any], deadline: float, deadline_s: float):
        """Start the streamed answer, retrying while nothing can have been generated (bounded, before `deadline`)."""
        loop = asyncio.get_running_loop()
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda err: isinstance(err, LlmFailure) and err.retryable),
            stop=stop_after_attempt(self.connect_attempts) | (lambda state: loop.time() >= deadline),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            before_sleep=lambda state: log.info(
                "llm request retried", extra={"attempt": state.attempt_number, "model": self.model}),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._guarded(
                    self._openai.chat.completions.create(**request, stream=True), deadline, deadline_s,
                    request["max_tokens"],
                )
        raise AssertionError("not reached: tenacity re-raises the last failure")

    async def _stream(self, request: dict[str, Any], *, deadline_s: float) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + deadline_s
        max_tokens = request["max_tokens"]
        stream = await self._open_stream(request, deadline, deadline_s)
        chunks = stream.__aiter__()
        received_chunk = finished = False
        first_text_at: float | None = None
        try:
            while True:
                if loop.time() >= deadline:
                    raise LlmFailure("timeout", self._timeout_message(deadline_s, max_tokens))
                try:
                    chunk = await self._guarded(_next_or_none(chunks), deadline, deadline_s, max_tokens)
                except LlmFailure as failure:
                    if failure.kind != "unavailable":
                        raise
                    if not received_chunk:
                        break  # the server accepted the request, then dropped it: diagnosed below
                    # openai wraps a connection lost mid-stream as a connection error; say what happened.
                    raise LlmFailure("unavailable", self._broken_stream_message()) from None
                if chunk is None:
                    break
                received_chunk = True
                for choice in chunk.choices:
                    finished = finished or choice.finish_reason is not None
                    text = choice.delta.content if choice.delta else None
                    if text:
                        if first_text_at is None:
                            first_text_at = loop.time()
                            first_token_s = first_text_at - started
                            STAGE_LATENCY.labels(self.metrics_service, "llm_first_token").observe(first_token_s)
                        yield text
        finally:
            with contextlib.suppress(Exception):
                await stream.close()  # closes the connection, so the server stops generating
        if not received_chunk:
            await self._diagnose_empty_stream(request, deadline, deadline_s)
        if not finished:
            raise LlmFailure(
                "bad_response",
                f"the LLM server at {self.base_url} ended the answer without a finish reason: it crashed or "
                "restarted mid-answer; read the llm service's log",
            )

    def _broken_stream_message(self) -> str:
        return (
            f"the connection to the LLM server at {self.base_url} broke mid-answer: it crashed or restarted; "
            "read the llm service's log"
        )

    def _timeout_message(self, deadline_s: float, max_tokens: int | None) -> str:
        tokens = f" of up to {max_tokens} tokens" if max_tokens else ""
        return (
            f"the LLM at {self.base_url} did not finish an answer{tokens} within {deadline_s:.2f} s: it is "
            "overloaded or too slow for this deadline; raise dialog.llm_deadline_s, lower llm.max_tokens, "
            "or add LLM capacity"
        )

    async def _guarded(self, awaitable, deadline: float, deadline_s: float, max_tokens: int | None = None):
        """Await one step of a request before `deadline`, turning every failure into LlmFailure."""
        try:
            async with asyncio.timeout_at(deadline):
                return await awaitable
        except TimeoutError:
            raise LlmFailure("timeout", self._timeout_message(deadline_s, max_tokens)) from None
        except openai.APITimeoutError:
            raise LlmFailure(
                "unavailable",
                f"the LLM server at {self.base_url} did not accept a connection within {self._connect_timeout_s} s: "
                "check that the llm service is running (`quietline status`) and llm.host/llm.port",
                retryable=True,
            ) from None
        except openai.APIConnectionError:
            # Raised before any response arrived (refused, reset or closed while sending the request).
            raise LlmFailure(
                "unavailable",
                f"the LLM server at {self.base_url} is not reachable: start it (`quietline up`, or "
                "`python -m services.llm`) or correct llm.host/llm.port",
                retryable=True,
            ) from None
        except httpx.TransportError:
            # Raised unwrapped while a stream is being read: the server went away mid-answer.
            raise LlmFailure("unavailable", self._broken_stream_message()) from None
        except openai.APIStatusError as err:
            kind, message = self._status_failure(err)
            # "Busy or not ready" answers come before any generation: safe to ask again.
            raise LlmFailure(kind, message, retryable=err.status_code in (429, 502, 503, 504)) from None
        except json.JSONDecodeError:
            raise LlmFailure(
                "bad_response",
                f"the LLM server at {self.base_url} sent a stream that is not OpenAI-compatible JSON: check that "
                "llm.base_url points at the LLM server",
            ) from None
        except openai.APIError as err:
            # An error event inside the stream; its text may quote the request, so only its type is kept.
            raise LlmFailure(
                "bad_response",
                f"the LLM server at {self.base_url} reported an error mid-answer ({type(err).__name__}): read the "
                "llm service's log",
            ) from None

    def _status_failure(self, err: openai.APIStatusError) -> tuple[str, str]:
        # The server's own message may quote the request (caller text), so only codes and numbers are kept.
        body = err.body if isinstance(err.body, dict) else {}
        code = str(body.get("code") or body.get("type") or "")
        text = str(body.get("message") or err.message or "")
        if err.status_code == 400 and (
            "context_length_exceeded" in code or "context length" in text or "maximum model length" in text
        ):
            size = _CONTEXT_SIZE.search(text)
            window = f" of {size.group(1)} tokens" if size else ""
            return (
                "context_overflow",
                f"the prompt and max_tokens do not fit the model's context window{window}: send fewer or shorter "
                "passages and turns, lower max_tokens, or raise llm.context_tokens",
            )
        if err.status_code == 404:
            return (
                "bad_response",
                f"the LLM server at {self.base_url} does not serve model '{self.model}' (HTTP 404): set llm.model "
                "to the name the server was started with",
            )
        if err.status_code in (429, 502, 503, 504):
            return (
                "unavailable",
                f"the LLM server at {self.base_url} is busy or not ready (HTTP {err.status_code}): wait for it to "
                "become healthy or add LLM capacity",
            )
        status = f"HTTP {err.status_code}, {code}" if code else f"HTTP {err.status_code}"
        return (
            "bad_response",
            f"the LLM server at {self.base_url} rejected the request ({status}): check llm.model and the request "
            "parameters, and read the llm service's log",
        )

    async def _diagnose_empty_stream(self, request: dict, deadline: float, deadline_s: float) -> None:
        """Find out why a stream ended before its first chunk, then raise.

        llama-cpp-python's server answers a streaming request whose prompt exceeds the context window
        with `200 OK`, then drops the connection; asked again without streaming, it names the error (it
        checks the prompt's length before evaluating anything, so this costs no generation then).
        """
        for attempt in range(2):
            try:
                await self._guarded(
                    self._openai.chat.completions.create(**{**request, "max_tokens": 1}, stream=False),
                    deadline, deadline_s,
                )
                break
            except LlmFailure as failure:
                # The dropped stream can leave a pooled connection the server is just closing; retry once.
                if failure.kind != "unavailable" or attempt:
                    raise
        raise LlmFailure(
            "bad_response",
            f"the LLM server at {self.base_url} ended the stream without an answer: read the llm service's log",
        ) from None


async def _next_or_none(chunks: AsyncIterator[Any]) -> Any:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None


WARM_UP_MESSAGES = [{"role": "user", "content": "Say hello."}]


async def warm_up(endpoint: LlmEndpoint, deadline_s: float = 120.0) -> None:
    """One one-token answer from a freshly started server, so the first caller does not pay its start-up
    costs (weights paged in from disk, kernels and buffers set up). Raises LlmFailure on failure."""
    async with LlmClient.from_settings(endpoint, metrics_service="appliance") as client:
        await client.complete_chat(WARM_UP_MESSAGES, max_tokens=1, temperature=0.0, deadline_s=deadline_s,
                                   priority="background")

"""The tool adapter interface: how the dialog calls business systems on the verified caller's behalf.

A tool is a `ToolAdapter`: a `ToolSpec` (name, description, the JSON schema of the arguments the LLM
fills in, timeout, circuit breaker settings, the verification it needs, whether it changes data and
so needs a confirmation turn) plus the code that reaches a back end. The dialog calls
`adapter.invoke(session, arguments, confirmed)`; every refusal or fault comes back as a `ToolFailure`
whose `kind` the dialog routes on (ask again, verify, read back for confirmation, apologise, hand to
a colleague).

The customer is never an argument: the LLM-facing schemas hold no customer id, and the adapter takes
the customer from the `VerifiedSession` the dialog established (ARCHITECTURE.md, "Tools act only for
the verified caller"). `ToolSpec` rejects a schema that names one.

Site integrations plug in behind the same interface. `load_tool_registry` reads a YAML file mapping
tool names to an adapter kind and its options:

    tools:
      get_order_details:    {kind: retail_backoffice}
      cancel_pending_order: {kind: retail_backoffice, timeout_s: 4, failure_threshold: 3}
      get_user_details:
        kind: retail_backoffice
        options: {dsn: "postgresql://shop@crm-db/shop"}   # default: the appliance's database.dsn

Built-in kinds: `retail_backoffice` (services.dialog.tools.retail), `bank_backoffice`
(services.dialog.tools.bank) and `appointments_backoffice` (services.dialog.tools.appointments: adviser
appointment booking), all on the PostgreSQL schema `backoffice`.
A new kind (an HTTP CRM, a core-banking gRPC API) is a module with `KNOWN_TOOLS` and an async
`build_tool(name, options, context)` named in ADAPTER_KINDS.
"""

from __future__ import annotations

import asyncio
import enum
import importlib
import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from services.kit.config import ConfigError, read_yaml_mapping

log = logging.getLogger("quietline.dialog.tools")

# Argument names that would let model output choose whose data a tool touches. A schema naming one is
# a design error (the customer comes from the verified session), caught when the spec is built.
CUSTOMER_ID_ARGUMENTS = frozenset({"user_id", "customer_id", "client_id", "account_holder_id", "caller_id"})


class VerificationLevel(enum.IntEnum):
    """How sure the dialog is of who is calling; a tool names the least it needs."""

    NONE = 0  # anonymous: catalogue questions, identification itself
    IDENTIFIED = 1  # a customer record was found for the caller's claim, not yet proven
    VERIFIED = 2  # the caller passed the line's verification flow


@dataclass(frozen=True)
class VerifiedSession:
    """Who the dialog has established the caller to be. Built by the dialog, never from model output.

    `customer_id` is the back office's id of the caller (None while anonymous); `method` records how
    the level was reached (for example "email" or "name_zip"), for the audit trail.
    """

    call_id: str
    level: VerificationLevel = VerificationLevel.NONE
    customer_id: str | None = None
    method: str = ""

    def __post_init__(self) -> None:
        if self.level > VerificationLevel.NONE and not self.customer_id:
            raise ValueError(f"a session at level {self.level.name} needs the customer_id it was established for")

    @classmethod
    def anonymous(cls, call_id: str) -> VerifiedSession:
        """A caller nobody has identified yet."""
        return cls(call_id)

    @classmethod
    def verified(cls, call_id: str, customer_id: str, method: str) -> VerifiedSession:
        """A caller who passed verification as `customer_id` by `method`."""
        return cls(call_id, VerificationLevel.VERIFIED, customer_id, method)


class FailureKind(str, enum.Enum):
    """Why a tool call did not produce a result; the dialog picks its next move from this."""

    INVALID_ARGUMENTS = "invalid_arguments"  # ask the caller again for the named field
    NOT_VERIFIED = "not_verified"  # run (or finish) the verification flow first
    NEEDS_CONFIRMATION = "needs_confirmation"  # read the preview back and ask "shall I?"
    POLICY_REFUSED = "policy_refused"  # a business rule forbids it; `rule` says which
    NOT_FOUND = "not_found"  # the order / item / user named does not exist
    FORBIDDEN = "forbidden"  # it exists but belongs to another customer
    TIMEOUT = "timeout"  # the back end did not answer within the tool's timeout
    UNAVAILABLE = "unavailable"  # circuit open or back end down: apologise, offer a colleague
    BAD_RESULT = "bad_result"  # the back end answered something unusable


# Kinds that say the back end is unhealthy: only these count towards opening the circuit breaker. A
# caller asking for someone else's order says nothing about the back end's health.
BACKEND_FAULTS = frozenset({FailureKind.TIMEOUT, FailureKind.UNAVAILABLE, FailureKind.BAD_RESULT})


class ToolFailure(Exception):
    """A tool call refused or failed; `kind` is what the dialog routes on, the message is for people.

    `field` names the offending argument (invalid_arguments), `rule` the business rule (policy_refused),
    `preview` what the action would do (needs_confirmation), `retry_after_s` when an open circuit
    will let a call through again (unavailable).
    """

    def __init__(self, kind: FailureKind, tool: str, message: str, *, field: str | None = None,
                 rule: str | None = None, preview: Any = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.tool = tool
        self.message = message
        self.field = field
        self.rule = rule
        self.preview = preview
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"ToolFailure({self.kind.value}, {self.tool!r}, {self.message!r})"

    def as_tool_result(self) -> dict[str, Any]:
        """The failure as the JSON object handed back to the LLM in place of a result."""
        result: dict[str, Any] = {"error": self.kind.value, "message": self.message}
        for key in ("field", "rule"):
            if getattr(self, key):
                result[key] = getattr(self, key)
        return result


@dataclass(frozen=True)
class ToolSpec:
    """What the dialog and the LLM know about a tool, and the limits it runs under.

    `parameters` is the JSON schema (draft 2020-12) of the arguments as the LLM sees it. `mutates`
    marks tools that change data; those need a confirmation turn unless `needs_confirmation` says
    otherwise. `identifies_caller` marks tools whose result is a customer id the verification flow may
    establish the session with. `circuit` names the circuit breaker (tools sharing a back end may
    share one); by default each tool has its own.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    requires: VerificationLevel = VerificationLevel.VERIFIED
    mutates: bool = False
    needs_confirmation: bool | None = None
    identifies_caller: bool = False
    timeout_s: float = 2.0
    failure_threshold: int = 5
    recovery_s: float = 30.0
    circuit: str = ""
    result_schema: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.needs_confirmation is None:
            object.__setattr__(self, "needs_confirmation", self.mutates)
        if not self.circuit:
            object.__setattr__(self, "circuit", f"tool:{self.name}")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"tool {self.name}: timeout_s must be a positive number of seconds, not {self.timeout_s!r}")
        if self.failure_threshold < 1 or self.recovery_s <= 0:
            raise ValueError(f"tool {self.name}: failure_threshold must be >= 1 and recovery_s > 0")
        for schema in (self.parameters, self.result_schema):
            if schema is None:
                continue
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as err:
                raise ValueError(f"tool {self.name}: its schema is not a valid JSON schema ({err.message})") from None
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name}: the arguments schema must describe an object (type: object)")
        named = CUSTOMER_ID_ARGUMENTS & set(self.parameters.get("properties", {}))
        if named:
            raise ValueError(
                f"tool {self.name}: argument {min(named)!r} would let model output choose the customer: "
                "remove it and take the customer from the VerifiedSession"
            )

    def openai_tool(self) -> dict[str, Any]:
        """The spec in the OpenAI chat-completions `tools` format."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}}


def _failing_field(error: ValidationError) -> str:
    """The dotted path of the argument a schema error is about (the missing or extra one included)."""
    path = [str(part) for part in error.absolute_path]
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        path += missing[:1]
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        path += sorted(set(error.instance) - known)[:1]
    return ".".join(path) or "(arguments)"


def _is_plain_json(value: Any) -> bool:
    """True when `value` is made only of dict (str keys), list, str, int, finite float, bool and None."""
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_plain_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain_json(item) for key, item in value.items())
    return False


class ToolAdapter(ABC):
    """One tool: its spec and the code that reaches its back end.

    Subclasses implement `run` (and `preview` when the back end can say what an action would do
    without doing it). `run` raises ToolFailure for refusals (policy_refused, not_found, forbidden)
    and for back-end faults it recognises; `invoke` adds the checks every tool shares.
    """

    def __init__(self, spec: ToolSpec, breakers: AsyncCircuitBreakerFactory | None = None) -> None:
        self.spec = spec
        self._arguments = Draft202012Validator(spec.parameters)
        self._result = Draft202012Validator(spec.result_schema) if spec.result_schema is not None else None
        self.breakers = breakers or AsyncCircuitBreakerFactory()

    @property
    def name(self) -> str:
        return self.spec.name

    @abstractmethod
    async def run(self, session: VerifiedSession, arguments: dict[str, Any]) -> Any:
        """Do the call for `session`'s customer with validated `arguments`; return a plain JSON value."""

    async def preview(self, session: VerifiedSession, arguments: dict[str, Any]) -> Any:
        """What the (mutating) call would do, checked against the rules but not applied; None if unknown.

        Runs before the confirmation turn, so a refusal comes before the caller is asked "shall I?".
        """
        return None

    def failure(self, kind: FailureKind, message: str, **details: Any) -> ToolFailure:
        """A ToolFailure of this tool (for subclasses and their helpers)."""
        return ToolFailure(kind, self.name, message, **details)

    def check_arguments(self, arguments: Any) -> dict[str, Any]:
        """`arguments` validated against the schema, or ToolFailure(invalid_arguments) naming the field."""
        if not isinstance(arguments, dict):
            raise self.failure(FailureKind.INVALID_ARGUMENTS,
                               f"{self.name}: arguments must be a JSON object, not {type(arguments).__name__}",
                               field="(arguments)")
        error = best_match(self._arguments.iter_errors(arguments))
        if error is not None:
            name = _failing_field(error)
            if error.validator == "additionalProperties" and name in CUSTOMER_ID_ARGUMENTS:
                hint = "the tool always acts for the verified caller: leave it out"
            elif error.validator == "additionalProperties":
                hint = f"the arguments are {', '.join(self.spec.parameters.get('properties', {})) or 'none'}"
            else:
                hint = "ask the caller for it again"
            raise self.failure(FailureKind.INVALID_ARGUMENTS, f"{self.name}: argument {name}: {error.message}; {hint}",
                               field=name)
        return arguments

    def check_session(self, session: VerifiedSession) -> None:
        """ToolFailure(not_verified) unless the session reached the tool's verification level."""
        if session.level < self.spec.requires:
            raise self.failure(
                FailureKind.NOT_VERIFIED,
                f"{self.name} needs a {self.spec.requires.name.lower()} caller and this one is "
                f"{session.level.name.lower()}: complete the verification flow first",
            )

    async def invoke(self, session: VerifiedSession, arguments: Any, confirmed: bool = False) -> Any:
        """Check, then call the tool for `session`'s customer; its plain-JSON result, or ToolFailure.

        Order of checks: verification level, arguments, then for a tool that needs confirmation and
        has none, the back end's preview (so policy refusals come first) and needs_confirmation with
        that preview. The call runs under the tool's timeout and circuit breaker.
        """
        self.check_session(session)
        arguments = self.check_arguments(arguments)
        if self.spec.needs_confirmation and not confirmed:
            preview = await self._guarded(self.preview(session, arguments))
            raise self.failure(
                FailureKind.NEEDS_CONFIRMATION,
                f"{self.name} changes the customer's data: read the details back and call again with "
                "confirmed=True only after the caller says yes",
                preview=preview,
            )
        return await self._guarded(self.run(session, arguments), check_result=True)

    async def _guarded(self, call: Awaitable[Any], check_result: bool = False) -> Any:
        """Await `call` under the timeout and the circuit breaker, mapping faults to ToolFailure."""
        spec = self.spec
        breaker = await self.breakers.get_breaker(
            spec.circuit, spec.failure_threshold, spec.recovery_s,
            exclude=[(ToolFailure, lambda err: err.kind not in BACKEND_FAULTS)],
        )
        started = time.monotonic()
        try:
            async with breaker:
                try:
                    result = await asyncio.wait_for(call, spec.timeout_s)
                except TimeoutError:
                    raise self.failure(
                        FailureKind.TIMEOUT,
                        f"{self.name}: the back end did not answer within {spec.timeout_s:g} s: "
                        "tell the caller it is slow and offer to try again or a colleague",
                    ) from None
                if check_result:
                    self._check_result(result)
                return result
        except OpenedState as opened:
            if asyncio.iscoroutine(call):
                call.close()  # never started: the breaker refused before awaiting it
            retry_after = max(0.0, opened.opened_at + spec.recovery_s - time.time())
            raise self.failure(
                FailureKind.UNAVAILABLE,
                f"{self.name}: its back end failed {spec.failure_threshold} times in a row, so calls are "
                f"paused (circuit {spec.circuit} open) for another {retry_after:.0f} s: offer a colleague",
                retry_after_s=retry_after,
            ) from None
        except ToolFailure as failure:
            if failure.kind in BACKEND_FAULTS:
                log.warning("tool call failed", extra={"tool": self.name, "kind": failure.kind.value,
                                                       "elapsed_s": round(time.monotonic() - started, 3)})
            raise
        except Exception as err:  # an adapter bug or an unexpected back-end error: still a typed failure
            log.exception("tool call raised", extra={"tool": self.name})
            raise self.failure(
                FailureKind.UNAVAILABLE,
                f"{self.name} failed unexpectedly ({type(err).__name__}: {err}): see the dialog log",
            ) from err

    def _check_result(self, result: Any) -> None:
        if not _is_plain_json(result):
            raise self.failure(
                FailureKind.BAD_RESULT,
                f"{self.name}: the back end returned a {type(result).__name__}, not a plain JSON value: "
                "fix the adapter to convert it",
            )
        if self._result is not None:
            error = best_match(self._result.iter_errors(result))
            if error is not None:
                where = "/".join(str(part) for part in error.absolute_path) or "(result)"
                raise self.failure(FailureKind.BAD_RESULT,
                                   f"{self.name}: the back end's result at {where} {error.message}: check the back end")


class FunctionTool(ToolAdapter):
    """A tool computed in-process (a calculator, a no-op note): no back end, same checks."""

    def __init__(self, spec: ToolSpec, function: Callable[[VerifiedSession, dict[str, Any]], Any],
                 breakers: AsyncCircuitBreakerFactory | None = None) -> None:
        super().__init__(spec, breakers)
        self.function = function

    async def run(self, session: VerifiedSession, arguments: dict[str, Any]) -> Any:
        """Call the function; raising ToolFailure is how it refuses."""
        result = self.function(session, arguments)
        return await result if asyncio.iscoroutine(result) else result


class ToolRegistry:
    """The tools a dialog line offers, by name, and the resources (connection pools) they hold."""

    def __init__(self, adapters: Iterable[ToolAdapter] = (), closers: Iterable[Callable[[], Awaitable[None]]] = ()) -> None:
        self._adapters: dict[str, ToolAdapter] = {}
        self._closers = list(closers)
        for adapter in adapters:
            self.add(adapter)

    def add(self, adapter: ToolAdapter) -> None:
        """Register `adapter`; a second tool of the same name is an error."""
        if adapter.name in self._adapters:
            raise ValueError(f"tool {adapter.name} is registered twice: keep one")
        self._adapters[adapter.name] = adapter

    def names(self) -> list[str]:
        """The registered tool names, in registration order."""
        return list(self._adapters)

    def get(self, name: str) -> ToolAdapter:
        """The adapter called `name`; ToolFailure(invalid_arguments) for a tool the line does not offer."""
        try:
            return self._adapters[name]
        except KeyError:
            raise ToolFailure(FailureKind.INVALID_ARGUMENTS, name,
                              f"there is no tool {name!r}: the tools are {', '.join(self._adapters)}",
                              field="name") from None

    def openai_tools(self, session: VerifiedSession) -> list[dict[str, Any]]:
        """The LLM-facing schemas (OpenAI tools format) of the tools `session` may use now."""
        return [adapter.spec.openai_tool() for adapter in self._adapters.values()
                if session.level >= adapter.spec.requires]

    async def invoke(self, session: VerifiedSession, name: str, arguments: Any, confirmed: bool = False) -> Any:
        """Invoke the tool `name` (see ToolAdapter.invoke)."""
        return await self.get(name).invoke(session, arguments, confirmed)

    async def aclose(self) -> None:
        """Close what the tools opened (connection pools), each once."""
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            await close()


# --- site configuration -----------------------------------------------------------------------

# Adapter kind -> module implementing it (imported when a configuration names the kind).
ADAPTER_KINDS: dict[str, str] = {
    "retail_backoffice": "services.dialog.tools.retail",
    "bank_backoffice": "services.dialog.tools.bank",
    "appointments_backoffice": "services.dialog.tools.appointments",
}

TOOL_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "tools": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "kind": {"type": "string"},
                    "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 120},
                    "failure_threshold": {"type": "integer", "minimum": 1},
                    "recovery_s": {"type": "number", "exclusiveMinimum": 0},
                    "circuit": {"type": "string", "minLength": 1},
                    "options": {"type": "object"},
                },
                "required": ["kind"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["tools"],
    "additionalProperties": False,
}
# The spec fields a site may override per tool.
SPEC_OVERRIDES = ("timeout_s", "failure_threshold", "recovery_s", "circuit")


class ToolConfigError(ConfigError):
    """The tools configuration cannot be used; the message names the tool, the key and the fix."""


@dataclass
class BuildContext:
    """What adapter kinds share while a registry is built: the default DSN, breakers, open resources."""

    default_dsn: str = ""
    breakers: AsyncCircuitBreakerFactory = field(default_factory=AsyncCircuitBreakerFactory)
    _resources: dict[Any, Any] = field(default_factory=dict)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def resource(self, key: Any, opener: Callable[[], Awaitable[Any]],
                       closer: Callable[[Any], Awaitable[None]] | None = None) -> Any:
        """The resource under `key` (a connection pool for one DSN), opened on first use and shared."""
        if key not in self._resources:
            opened = await opener()
            self._resources[key] = opened
            if closer is not None:
                self.closers.append(lambda: closer(opened))
        return self._resources[key]


def read_tool_config(path: Path | str) -> dict[str, Any]:
    """The tools YAML file at `path`, parsed; ToolConfigError naming the problem otherwise."""
    try:
        return read_yaml_mapping(Path(path), "tools config", "create it or correct the path", "tools")
    except ConfigError as err:
        raise ToolConfigError(str(err)) from None


async def load_tool_registry(config: Mapping[str, Any] | Path | str, default_dsn: str = "",
                             breakers: AsyncCircuitBreakerFactory | None = None) -> ToolRegistry:
    """Build the registry a tools configuration (a YAML path or its parsed mapping) describes.

    `default_dsn` is the database a PostgreSQL-backed kind uses when its options name none (the
    appliance's database.dsn). Raises ToolConfigError naming the tool and key at fault.
    """
    if not isinstance(config, Mapping):
        config = read_tool_config(config)
    error = best_match(Draft202012Validator(TOOL_CONFIG_SCHEMA).iter_errors(config))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ToolConfigError(f"tools config, at {where}: {error.message}: the shape is "
                              "tools: {<tool name>: {kind: <kind>, timeout_s, failure_threshold, recovery_s, circuit, options}}")
    context = BuildContext(default_dsn, breakers or AsyncCircuitBreakerFactory())
    registry = ToolRegistry()
    try:
        for name, entry in config["tools"].items():
            kind = entry["kind"]
            if kind not in ADAPTER_KINDS:
                raise ToolConfigError(f"tools config, tool {name}: unknown kind {kind!r}: use one of {', '.join(ADAPTER_KINDS)}")
            module = importlib.import_module(ADAPTER_KINDS[kind])
            if name not in module.KNOWN_TOOLS:
                raise ToolConfigError(f"tools config, tool {name}: kind {kind} has no such tool: "
                                      f"it offers {', '.join(module.KNOWN_TOOLS)}")
            adapter = await module.build_tool(name, dict(entry.get("options", {})), context)
            overrides = {key: entry[key] for key in SPEC_OVERRIDES if key in entry}
            if overrides:
                adapter.spec = replace(adapter.spec, **overrides)
            registry.add(adapter)
    except BaseException:
        for close in reversed(context.closers):
            await close()
        raise
    registry._closers.extend(context.closers)
    return registry


def to_json_text(value: Any) -> str:
    """A tool result as the compact JSON text that goes into the LLM conversation."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

"""The grpc.aio Dialog servicer: validates a TurnRequest and streams the turn's events.

The turn logic lives in `router.TurnRouter`; this layer maps the RPC's deadline to the turn's
budget, stops the turn when the RPC is cancelled, and turns bad input into clear statuses.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from quietline.v1 import dialog_pb2, dialog_pb2_grpc
from services.dialog.router import TurnRouter
from services.kit.metrics import ERRORS

log = logging.getLogger("quietline.dialog")

# One turn's final transcript; anything longer is not speech from one caller turn.
MAX_TRANSCRIPT_CHARS = 2000


class DialogServicer(dialog_pb2_grpc.DialogServicer):
    """Serves `quietline.v1.Dialog/Turn` with a TurnRouter."""

    def __init__(self, router: TurnRouter) -> None:
        self.router = router

    async def Turn(self, request: dialog_pb2.TurnRequest, context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[dialog_pb2.TurnEvent]:
        """Stream one turn's events; the client's deadline is the turn's budget."""
        if not request.call.call_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "TurnRequest.call.call_id is empty: pass the gateway's call id (and turn number) so the "
                "turn can be logged and audited",
            )
        if len(request.transcript) > MAX_TRANSCRIPT_CHARS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"TurnRequest.transcript has {len(request.transcript)} characters, more than the "
                f"{MAX_TRANSCRIPT_CHARS} one caller turn can hold: send the final transcript of a single turn",
            )
        # None when the client set no deadline.
        budget_s = context.time_remaining()
        events = self.router.turn(request, budget_s)
        try:
            async for event in events:
                yield event
        except Exception as err:  # noqa: BLE001 - a bug in one turn must not take the process down
            ERRORS.labels("dialog", "turn_failed").inc()
            # The exception's text may quote caller data; its type and the ids are enough to find it.
            log.error("turn failed", extra={"call_id": request.call.call_id, "turn": request.call.turn,
                                            "error": type(err).__name__})
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"dialog turn failed ({type(err).__name__}): see the dialog log for call "
                f"{request.call.call_id} turn {request.call.turn}",
            )
        finally:
            # On cancellation (barge-in, hang-up, deadline) this stops the turn and closes the LLM stream.
            await events.aclose()

"""Request validation: every string, list and number a client sends is bounded before it reaches the models.

The limits on strings and lists are fixed here (they are part of the contract and documented in the README's
"Limits" table); the magnitudes of context values and rewards are settings (``[limits]``), and so is the slate
size (``server.max_num_items``). Every error names the field first and echoes at most :data:`ECHO_CHARS`
characters of the value it refuses, so an error message stays short whatever was sent.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from server.assignment import Placement, place
from server.errors import InvalidArgument, NotFound
from server.pb import scout_pb2
from server.settings import LimitSettings, Settings

MAX_UNIT_ID_CHARS = 512
MAX_SURFACE_CHARS = 128
MAX_CONTEXT_ENTRIES = 64
MAX_CONTEXT_KEY_CHARS = 128
MAX_IDS = 1000
MAX_ID_CHARS = 512
MAX_EVENT_ID_CHARS = 64
MAX_REWARD_ID_CHARS = 128
ECHO_CHARS = 40
MAX_LISTED = 20


def echo(value: object) -> str:
    """``repr`` of a value cut to :data:`ECHO_CHARS` characters (escapes included), saying how long it was."""
    if isinstance(value, str):
        text = repr(value[:ECHO_CHARS])
        if len(value) <= ECHO_CHARS and len(text) <= ECHO_CHARS + 2:
            return text
        return f"{text[:ECHO_CHARS]}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}..."


def listing(values: Sequence[str]) -> str:
    """A short list of configured names for an error message (at most :data:`MAX_LISTED`)."""
    shown = [echo(v) for v in values[:MAX_LISTED]]
    more = f", and {len(values) - MAX_LISTED} more" if len(values) > MAX_LISTED else ""
    return "[" + ", ".join(shown) + more + "]"


def check_string(field: str, value: str, max_chars: int) -> None:
    """A non-empty string of at most ``max_chars`` characters."""
    if not value:
        raise InvalidArgument(f"{field} must be a non-empty string")
    if len(value) > max_chars:
        raise InvalidArgument(f"{field} must be at most {max_chars} characters, got {echo(value)}")


def check_number(field: str, value: float, max_abs: float) -> None:
    """A finite number of magnitude at most ``max_abs``."""
    if not math.isfinite(value):
        raise InvalidArgument(f"{field} must be finite, got {value}")
    if abs(value) > max_abs:
        raise InvalidArgument(f"{field} must be between {-max_abs:g} and {max_abs:g}, got {float(value)!r}")


def check_ids(field: str, ids: Sequence[str]) -> None:
    """At most :data:`MAX_IDS` non-empty ids of at most :data:`MAX_ID_CHARS` characters each."""
    if len(ids) > MAX_IDS:
        raise InvalidArgument(f"{field} may hold at most {MAX_IDS} ids, got {len(ids)}")
    for k, item in enumerate(ids):
        if not item or len(item) > MAX_ID_CHARS:
            raise InvalidArgument(
                f"{field}[{k}] must be a non-empty id of at most {MAX_ID_CHARS} characters, got {echo(item)}"
            )


def check_recommend(
    settings: Settings,
    unit_id: str,
    surface: str,
    num_items: int,
    context: Mapping[str, float],
    seed_item_ids: Sequence[str],
    exclude_item_ids: Sequence[str],
) -> Placement:
    """Check every field of a Recommend request; return where the unit lands (experiment, variant, assignment).

    Raises
    ------
    InvalidArgument
        A field is empty, too long, too large, non-finite or unknown to the experiment, or ``num_items`` is more
        than the experiments of the surface rank (the fewest ``candidates`` among them, so the answer does not
        depend on the unit); the message starts with the field's name.
    NotFound
        No experiment serves ``surface``.
    """
    check_string("unit_id", unit_id, MAX_UNIT_ID_CHARS)
    check_string("surface", surface, MAX_SURFACE_CHARS)
    limit = settings.server.max_num_items
    if not 1 <= num_items <= limit:
        raise InvalidArgument(f"num_items must be between 1 and {limit}, got {num_items}")
    if len(context) > MAX_CONTEXT_ENTRIES:
        raise InvalidArgument(f"context may hold at most {MAX_CONTEXT_ENTRIES} entries, got {len(context)}")
    for key in context:
        if len(key) > MAX_CONTEXT_KEY_CHARS:
            raise InvalidArgument(f"context key {echo(key)} is longer than {MAX_CONTEXT_KEY_CHARS} characters")
    check_ids("seed_item_ids", seed_item_ids)
    check_ids("exclude_item_ids", exclude_item_ids)
    placement = place(settings, surface, unit_id)
    if placement is None:
        known = sorted({s for e in settings.experiments for s in e.surfaces})
        raise NotFound(f"surface {echo(surface)} has no experiment; configured surfaces: {listing(known)}")
    experiment = placement.experiment
    fewest = min(e.candidates for e in settings.experiments_for(surface))  # the same for every unit
    if num_items > fewest:
        raise InvalidArgument(
            f"num_items must be at most {fewest}, the candidates the experiments of surface {echo(surface)} rank, "
            f"got {num_items}"
        )
    for key, value in context.items():
        if key not in experiment.context_keys:
            raise InvalidArgument(
                f"context[{echo(key)}] is not a context key of experiment {experiment.name!r}; "
                f"known: {listing(experiment.context_keys)}"
            )
        check_number(f"context[{echo(key)}]", value, settings.limits.max_context_abs)
    return placement


def check_reward(limits: LimitSettings, event_id: str, item_id: str, value: float, reward_id: str = "") -> None:
    """Check the fields of a Reward request.

    Raises
    ------
    InvalidArgument
        ``event_id`` or ``item_id`` is empty or too long, ``item_id`` holds a line break, or ``value`` is not
        finite or beyond ``limits.max_reward_abs``, or ``reward_id`` is longer than 128 characters; the message starts
        with the field's name.
    """
    check_string("event_id", event_id, MAX_EVENT_ID_CHARS)
    if len(reward_id) > MAX_REWARD_ID_CHARS:
        raise InvalidArgument(f"reward_id must be at most {MAX_REWARD_ID_CHARS} characters, got {echo(reward_id)}")
    check_string("item_id", item_id, MAX_ID_CHARS)
    if "\n" in item_id or "\r" in item_id:
        raise InvalidArgument(f"item_id must not contain line breaks, got {echo(item_id)}")
    check_number("value", value, limits.max_reward_abs)


class Undecodable:
    """What the tolerant deserializer hands the handler for bytes that are not a valid request message."""

    def __init__(self, message_type: str, error: str) -> None:
        self.message_type, self.error = message_type, error


def _parse(message_class: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:  # garbage bytes, invalid UTF-8 in a string field, truncated fields
            return Undecodable(message_class.DESCRIPTOR.full_name, str(exc))

    return parse


def _guard(method: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request is not a valid {request.message_type} message: {request.error[:200]}",
            )
        return await method(request, context)

    return handler


def add_recommender_to_server(servicer: Any, server: grpc.aio.Server, name: str = "Recommender") -> None:
    """Register the methods of ``servicer`` for service ``scout.v1.<name>`` with tolerant request decoding.

    Like the generated ``add_RecommenderServicer_to_server``, except that a request that does not decode is
    answered INVALID_ARGUMENT ("request is not a valid ...") instead of gRPC's UNKNOWN (in a client stream, that
    message's outcome says so). Covers every method the ``.proto`` declares.
    """
    service = scout_pb2.DESCRIPTOR.services_by_name[name]
    handlers = {}
    for method in service.methods:
        parse = _parse(getattr(scout_pb2, method.input_type.name))
        serialize = getattr(scout_pb2, method.output_type.name).SerializeToString
        if method.client_streaming:  # each undecodable message reaches the handler, which answers it on its own
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                getattr(servicer, method.name), request_deserializer=parse, response_serializer=serialize
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _guard(getattr(servicer, method.name)), request_deserializer=parse, response_serializer=serialize
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))

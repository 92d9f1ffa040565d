"""Typed request errors and the one mapping from them to gRPC status codes."""

from __future__ import annotations

import grpc


class ScoutError(Exception):
    """A request that cannot be served; the message is safe to return to the caller."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ScoutError):
    """A request field is malformed; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ScoutError):
    """The request names something that does not exist (an event, a surface)."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ScoutError):
    """The request is well formed but the state does not allow it (a closed reward window)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Overloaded(ScoutError):
    """The server has as many calls in flight as it takes; the caller should retry after a backoff."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ScoutError):
    """A dependency (Redis) cannot be reached; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE

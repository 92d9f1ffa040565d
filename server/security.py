"""Transport security and bearer-token authentication for every Scout service.

TLS and mutual TLS are gRPC server credentials built from :class:`~server.settings.SecuritySettings`. Tokens are
checked by :class:`TokenAuth`, a server interceptor, so a service added later is covered without any change here;
health and reflection stay open (load balancers probe health; reflection only describes the public ``.proto``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from server.settings import SecuritySettings

#: Methods under these prefixes need no token.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.", "/grpc.reflection.v1.")
MAX_TOKEN_CHARS = 4096


class SecurityError(ValueError):
    """A certificate, key or token file cannot be used; the message names the file and the problem."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecurityError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from exc
    if not data.strip():
        raise SecurityError(f"{path}: the {what} is empty")
    return data


def server_credentials(security: SecuritySettings) -> grpc.ServerCredentials | None:
    """TLS (or mutual-TLS) credentials, or None when ``security`` asks for plaintext."""
    if security.tls_cert_file is None or security.tls_key_file is None:
        return None
    cert = _read(security.tls_cert_file, "TLS certificate (PEM)")
    key = _read(security.tls_key_file, "TLS private key (PEM)")
    if b"-----BEGIN" not in cert:
        raise SecurityError(f"{security.tls_cert_file}: not a PEM certificate")
    if b"PRIVATE KEY-----" not in key:
        raise SecurityError(f"{security.tls_key_file}: not a PEM private key")
    client_ca = None
    if security.tls_client_ca_file is not None:
        client_ca = _read(security.tls_client_ca_file, "client CA certificate (PEM)")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def load_tokens(path: Path) -> frozenset[str]:
    """The tokens in ``path``: one per line, blank lines and ``#`` comments ignored; at least one."""
    text = _read(path, "tokens file").decode("utf-8", errors="replace")
    tokens = []
    for number, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if len(token) > MAX_TOKEN_CHARS or any(c.isspace() for c in token):
            raise SecurityError(f"{path}: line {number}: a token is one word of at most {MAX_TOKEN_CHARS} characters")
        tokens.append(token)
    if not tokens:
        raise SecurityError(f"{path}: holds no token (one per line; '#' starts a comment)")
    return frozenset(tokens)


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _denied(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED without reading the request."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuse every call but health and reflection unless it carries ``authorization: Bearer <known token>``."""

    def __init__(self, tokens: frozenset[str]) -> None:
        if not tokens:
            raise ValueError("tokens must hold at least one token")
        self._tokens = tuple(t.encode() for t in tokens)

    def allows(self, token: str | None) -> bool:
        """Whether ``token`` is one of the accepted tokens (constant time in the token's content)."""
        if token is None:
            return False
        given = token.encode("utf-8", errors="replace")
        return any(hmac.compare_digest(given, known) for known in self._tokens)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Pass open methods and calls with a known token through; answer the rest UNAUTHENTICATED."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        token = _bearer(handler_call_details.invocation_metadata)
        if self.allows(token):
            return handler
        reason = "missing bearer token" if token is None else "unknown bearer token"
        return _denied(handler, f"{reason}: send metadata 'authorization: Bearer <token>'")

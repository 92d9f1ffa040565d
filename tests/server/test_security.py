"""TLS, mutual TLS and bearer tokens on a real server, with certificates made at test time."""

import asyncio
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from certs import make_pki
from conftest import make_settings, run_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import start_server
from server.pb import scout_pb2, scout_pb2_grpc
from server.security import SecurityError, TokenAuth, load_tokens
from server.settings import SecuritySettings, SettingsError, load_settings

pytestmark = pytest.mark.redis
REQUEST = scout_pb2.RecommendRequest(unit_id="u1", surface="home", num_items=2, seed_item_ids=["item-0000001"])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _serve(index_dir, redis_url, tmp_path, security: SecuritySettings):
    settings = replace(make_settings(index_dir, redis_url, tmp_path / "logs"), security=security)
    return run_server(settings)


def _stop(running, thread) -> None:
    running.stop()
    running.loop.call_soon_threadsafe(running.loop.stop)
    thread.join(timeout=10)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_token_protected_server_refuses_clients_without_the_token(index_dir, clean_redis, tmp_path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# backends\nsecret-one\n\nsecret-two\n")
    running, thread = _serve(index_dir, clean_redis, tmp_path, SecuritySettings(tokens_file=tokens))
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = scout_pb2_grpc.RecommenderStub(channel)
            assert _code(lambda: stub.Recommend(REQUEST)) == grpc.StatusCode.UNAUTHENTICATED
            wrong = (("authorization", "Bearer secret-three"),)
            assert _code(lambda: stub.Recommend(REQUEST, metadata=wrong)) == grpc.StatusCode.UNAUTHENTICATED
            basic = (("authorization", "Basic secret-one"),)
            assert _code(lambda: stub.Recommend(REQUEST, metadata=basic)) == grpc.StatusCode.UNAUTHENTICATED
            rewards = iter([scout_pb2.RewardRequest(event_id="e", item_id="i")])
            assert _code(lambda: stub.RewardStream(rewards)) == grpc.StatusCode.UNAUTHENTICATED
            admin = scout_pb2_grpc.AdminStub(channel)
            listing = scout_pb2.ListExperimentsRequest()
            assert _code(lambda: admin.ListExperiments(listing)) == grpc.StatusCode.UNAUTHENTICATED
            good = (("authorization", "Bearer secret-two"),)
            assert admin.ListExperiments(listing, metadata=good).experiments[0].name == "home-ranking"
            for token in ("secret-one", "secret-two"):
                reply = stub.Recommend(REQUEST, metadata=(("authorization", f"Bearer {token}"),))
                assert len(reply.items) == 2
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # health stays open
    finally:
        _stop(running, thread)


def test_tls_server_serves_a_tls_client_and_refuses_plaintext(index_dir, clean_redis, tmp_path, pki) -> None:
    security = SecuritySettings(tls_cert_file=pki["server.pem"], tls_key_file=pki["server.key"])
    running, thread = _serve(index_dir, clean_redis, tmp_path, security)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        with grpc.secure_channel(f"localhost:{running.server.port}", credentials) as channel:
            assert len(scout_pb2_grpc.RecommenderStub(channel).Recommend(REQUEST, timeout=10).items) == 2
        with grpc.insecure_channel(running.target) as channel:
            stub = scout_pb2_grpc.RecommenderStub(channel)
            assert _code(lambda: stub.Recommend(REQUEST, timeout=5)) == grpc.StatusCode.UNAVAILABLE
    finally:
        _stop(running, thread)


def test_mutual_tls_requires_a_client_certificate(index_dir, clean_redis, tmp_path, pki) -> None:
    security = SecuritySettings(
        tls_cert_file=pki["server.pem"], tls_key_file=pki["server.key"], tls_client_ca_file=pki["ca"]
    )
    running, thread = _serve(index_dir, clean_redis, tmp_path, security)
    target = f"localhost:{running.server.port}"
    try:
        anonymous = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        with grpc.secure_channel(target, anonymous) as channel:
            stub = scout_pb2_grpc.RecommenderStub(channel)
            assert _code(lambda: stub.Recommend(REQUEST, timeout=5)) == grpc.StatusCode.UNAVAILABLE
        identified = grpc.ssl_channel_credentials(
            root_certificates=pki["ca"].read_bytes(),
            private_key=pki["client.key"].read_bytes(),
            certificate_chain=pki["client.pem"].read_bytes(),
        )
        with grpc.secure_channel(target, identified) as channel:
            assert len(scout_pb2_grpc.RecommenderStub(channel).Recommend(REQUEST, timeout=10).items) == 2
    finally:
        _stop(running, thread)


def test_bad_security_files_name_the_file(index_dir, clean_redis, tmp_path, pki) -> None:
    missing = tmp_path / "absent.pem"
    settings = make_settings(index_dir, clean_redis, tmp_path / "logs")
    bad = replace(settings, security=SecuritySettings(tls_cert_file=missing, tls_key_file=pki["server.key"]))
    with pytest.raises(SecurityError, match=f"{missing}: cannot read the TLS certificate"):
        asyncio.run(start_server(bad))
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello")
    bad = replace(settings, security=SecuritySettings(tls_cert_file=not_pem, tls_key_file=pki["server.key"]))
    with pytest.raises(SecurityError, match="not a PEM certificate"):
        asyncio.run(start_server(bad))
    empty = tmp_path / "tokens.txt"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(SecurityError, match=f"{empty}: holds no token"):
        load_tokens(empty)
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("one token\n")
    with pytest.raises(SecurityError, match="line 1"):
        load_tokens(spaced)
    with pytest.raises(SettingsError, match="tls_cert_file and tls_key_file must be set together"):
        load_settings(environ={"SCOUT_TLS_CERT_FILE": str(pki["server.pem"])})
    with pytest.raises(SettingsError, match="mutual TLS needs"):
        load_settings(environ={"SCOUT_TLS_CLIENT_CA_FILE": str(pki["ca"])})
    assert TokenAuth(frozenset({"a"})).allows("a") and not TokenAuth(frozenset({"a"})).allows("ab")

"""Bearer-token auth on every RPC (health excepted), TLS and mTLS with certificates made here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gotd.client.client import Client, TlsConfig
from gotd.v1 import selection_pb2 as pb
from gotd.v1 import selection_pb2_grpc as pb_grpc

CALLS = {
    "Ingest": lambda s, md: s.Ingest(iter([pb.IngestRequest(pool="p")]), metadata=md, timeout=10),
    "Select": lambda s, md: list(s.Select(pb.SelectRequest(pool="p", k=1), metadata=md, timeout=10)),
    "Score": lambda s, md: s.Score(pb.ScoreRequest(pool="p"), metadata=md, timeout=10),
    "PutTargetSet": lambda s, md: s.PutTargetSet(pb.PutTargetSetRequest(name="t"), metadata=md, timeout=10),
    "GetTargetSet": lambda s, md: s.GetTargetSet(pb.GetTargetSetRequest(name="t"), metadata=md, timeout=10),
    "DeleteTargetSet": lambda s, md: s.DeleteTargetSet(
        pb.DeleteTargetSetRequest(name="t"), metadata=md, timeout=10
    ),
    "GetPool": lambda s, md: s.GetPool(pb.GetPoolRequest(name="p"), metadata=md, timeout=10),
    "ListPools": lambda s, md: s.ListPools(pb.ListPoolsRequest(), metadata=md, timeout=10),
    "DeletePool": lambda s, md: s.DeletePool(pb.DeletePoolRequest(name="p"), metadata=md, timeout=10),
}


@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),)], ids=["missing", "wrong"])
def test_every_rpc_needs_the_token(auth_server: Any, method: str, metadata: tuple[Any, ...]) -> None:
    with grpc.insecure_channel(auth_server.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            CALLS[method](pb_grpc.SelectionServiceStub(channel), metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[Any]:
    from gotd.lab.demo import BackgroundServer

    srv = BackgroundServer(
        embedder=embedder, listen="127.0.0.1:0", data_dir=tmp_path_factory.mktemp("auth"), auth_token="s3cret"
    )
    yield srv
    srv.stop()


def test_right_token_passes_and_no_token_needed_without_auth(make_server: Any) -> None:
    srv = make_server(auth_token="s3cret")
    with Client(srv.address, token="s3cret") as client:
        assert client.pools() == []
    open_srv = make_server()
    with Client(open_srv.address) as client:
        assert client.pools() == []


Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _cert(name: str, key: ec.EllipticCurvePrivateKey, issuer: Issuer | None, *, ca: bool) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(
    tmp: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None
) -> tuple[Path, Path | None]:
    cert_path = tmp / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is None:
        return cert_path, None
    key_path = tmp / f"{name}.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def _pki(tmp: Path, name: str) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(f"{name}-ca", ca_key, None, ca=True)
    out: dict[str, Path] = {"ca": _write(tmp, f"{name}-ca", ca, None)[0]}
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert_path, key_path = _write(
            tmp, f"{name}-{role}", _cert("localhost", key, (ca, ca_key), ca=False), key
        )
        assert key_path is not None
        out[f"{role}_cert"], out[f"{role}_key"] = cert_path, key_path
    return out


def test_tls_round_trip(make_server: Any, tmp_path: Path) -> None:
    pki = _pki(tmp_path, "a")
    srv = make_server(tls_cert=pki["server_cert"], tls_key=pki["server_key"])
    tls = TlsConfig(ca_cert=pki["ca"], server_name="localhost")
    with Client(f"localhost:{srv.running.port}", tls=tls) as client:
        assert client.pools() == []


def test_mtls_accepts_our_ca_and_refuses_another(make_server: Any, tmp_path: Path) -> None:
    ours, theirs = _pki(tmp_path, "ours"), _pki(tmp_path, "theirs")
    srv = make_server(tls_cert=ours["server_cert"], tls_key=ours["server_key"], tls_client_ca=ours["ca"])
    address = f"localhost:{srv.running.port}"
    good = TlsConfig(ca_cert=ours["ca"], client_cert=ours["client_cert"], client_key=ours["client_key"])
    with Client(address, tls=good, timeout=10) as client:
        assert client.pools() == []
    bad = TlsConfig(ca_cert=ours["ca"], client_cert=theirs["client_cert"], client_key=theirs["client_key"])
    with Client(address, tls=bad, timeout=5) as client, pytest.raises(grpc.RpcError) as info:
        client.pools()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    none = TlsConfig(ca_cert=ours["ca"])
    with Client(address, tls=none, timeout=5) as client, pytest.raises(grpc.RpcError):
        client.pools()

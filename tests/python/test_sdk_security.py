"""The Python SDK's connection options against a server with tokens and TLS: a token from
`token=` and `token_file=`, PermissionDenied for a token without grants, Unauthenticated for an
unknown token, TLS with a CA, mutual TLS with a client certificate; and mypy over the package."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import unitable
except ImportError as e:
    _MISSING: str | None = str(e)
else:
    _MISSING = None

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _sdk_installed() -> None:
    if _MISSING is not None:
        pytest.fail(f"the unitable SDK is not installed ({_MISSING}); run `pip install ./python` "
                    "into the test venv (scripts/test does)")


def test_tokens_grants_and_denials(start_service, tmp_path: Path):
    token_file = tmp_path / "admin.token"
    service = start_service("--bootstrap-admin-token-file", str(token_file))
    target = service.grpc_url

    admin = unitable.connect(target, token_file=token_file)
    assert admin.whoami() == unitable.WhoAmI("admin", [], "token")
    admin.tables.create("sdk.secret", ["id:int64!", "v:string"], primary_key=["id"])
    admin.write("sdk.secret", [{"id": 1, "v": "x"}])

    new = admin.access.create_token("bob", "sdk test")
    assert new.token.startswith("ut_") and new.token_id in new.token
    assert [t.user for t in admin.access.list_tokens() if t.token_id == new.token_id] == ["bob"]
    bob = unitable.connect(target, token=new.token)
    assert bob.whoami() == unitable.WhoAmI("bob", [], "token")
    assert bob.tables.list() == []
    for call in (lambda: bob.scan("sdk.secret"), lambda: bob.lookup("sdk.secret", [1]),
                 lambda: bob.sql("SELECT * FROM sdk.secret"),
                 lambda: bob.subscribe("sdk.secret"),
                 lambda: bob.write("sdk.secret", [{"id": 2}]),
                 lambda: bob.tables.describe("sdk.secret")):
        with pytest.raises(unitable.PermissionDenied) as denied:
            call()
        assert denied.value.table == "sdk.secret" and "sdk.secret" in str(denied.value)
        assert "bob" in str(denied.value)

    admin.access.grant("read", table="sdk.secret", user="bob")
    assert unitable.Grant("read", "table", "sdk.secret", "user", "bob") in \
        admin.access.list_grants("bob")
    assert bob.scan("sdk.secret").to_pylist() == [{"id": 1, "v": "x"}]
    assert bob.tables.list() == ["sdk.secret"]
    with pytest.raises(unitable.PermissionDenied):
        bob.write("sdk.secret", [{"id": 2}])
    admin.access.add_group_member("writers", "bob")
    admin.access.grant("write", namespace="sdk", group="writers")
    assert bob.whoami().groups == ["writers"]
    assert bob.write("sdk.secret", [{"id": 2, "v": "y"}]).rows_written == 1
    admin.access.revoke("write", namespace="sdk", group="writers")
    admin.access.remove_group_member("writers", "bob")
    with pytest.raises(unitable.NotFound):
        admin.access.remove_group_member("writers", "bob")

    admin.access.revoke_token(new.token_id)
    with pytest.raises(unitable.Unauthenticated) as revoked:
        bob.whoami()
    assert "token" in str(revoked.value)
    stranger = unitable.connect(target, token="ut_000000000000_" + "0" * 64)
    with pytest.raises(unitable.Unauthenticated):
        stranger.scan("sdk.secret")
    # The harness allows anonymous callers (full access) besides tokens.
    assert unitable.connect(target).whoami().authenticated_by == "anonymous"
    for c in (admin, bob, stranger):
        c.close()


def _pki(dir: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate for user `carol`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder()
          .subject_name(name("sdk test ca")).issuer_name(name("sdk test ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
              key_encipherment=False, data_encipherment=False, key_agreement=False,
              encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    (dir / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who, sans, usage in [
        ("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
         x509.oid.ExtendedKeyUsageOID.SERVER_AUTH),
        ("carol", [x509.DNSName("carol")], x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH),
    ]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(who)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        (dir / f"{who}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, dir / f"{who}.key")


def test_tls_token_and_mutual_tls(start_service, tmp_path: Path):
    _pki(tmp_path)
    token_file = tmp_path / "admin.token"
    service = start_service(
        "--bootstrap-admin-token-file", str(token_file),
        "--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key"),
        "--tls-client-ca", str(tmp_path / "ca.pem"))
    url = f"https://127.0.0.1:{service.grpc_port}"

    with unitable.connect(url, ca_cert=tmp_path / "ca.pem", token_file=token_file) as admin:
        assert admin.whoami() == unitable.WhoAmI("admin", [], "token")
        admin.tables.create("tls.t", ["id:int64!", "v:string"], primary_key=["id"])
        admin.access.grant("write", table="tls.t", user="carol")

    # The CA as bytes, a client certificate and no token: the user is the certificate's name.
    carol = unitable.connect(
        f"127.0.0.1:{service.grpc_port}", tls=True, ca_cert=(tmp_path / "ca.pem").read_bytes(),
        client_cert=tmp_path / "carol.pem", client_key=tmp_path / "carol.key")
    assert carol.whoami() == unitable.WhoAmI("carol", [], "certificate")
    assert carol.write("tls.t", [{"id": 1, "v": "over tls"}]).rows_written == 1
    assert carol.lookup("tls.t", [1]).to_pylist() == [{"id": 1, "v": "over tls"}]
    with pytest.raises(unitable.PermissionDenied):
        carol.tables.create("tls.u", ["id:int64!"], primary_key=["id"])
    carol.close()

    # Without the CA the server's certificate is not trusted; plaintext gets nowhere either.
    for client in (unitable.connect(url, retries=0, timeout=10),
                   unitable.connect(f"http://127.0.0.1:{service.grpc_port}", retries=0,
                                    timeout=10)):
        with pytest.raises(unitable.Unavailable) as refused:
            client.scan("tls.t")
        assert "tls.t" in str(refused.value)
        client.close()
    with pytest.raises(unitable.InvalidArgument):
        unitable.connect(url, client_cert=tmp_path / "carol.pem")


def test_resp_over_tls_with_tokens_and_client_certificates(start_service, tmp_path: Path):
    """The RESP endpoint of a TLS server speaks TLS: redis-py (an outside client) reads with
    the CA and a token, or with a client certificate whose name is the user and whose grants
    apply; the SDK's `resp=` lookups follow the connection's TLS settings; plaintext and
    untrusted clients get nowhere."""
    import json

    import redis

    from harness import free_port

    _pki(tmp_path)
    token_file = tmp_path / "admin.token"
    port = free_port()
    service = start_service(
        "--bootstrap-admin-token-file", str(token_file), "--resp-addr", f"127.0.0.1:{port}",
        "--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key"),
        "--tls-client-ca", str(tmp_path / "ca.pem"), anonymous=False)
    url = f"https://127.0.0.1:{service.grpc_port}"
    ca = str(tmp_path / "ca.pem")
    rows = [{"id": i, "v": f"row {i}"} for i in range(1, 6)]
    admin = unitable.connect(url, ca_cert=tmp_path / "ca.pem", token_file=token_file,
                             resp=f"127.0.0.1:{port}")
    admin.tables.create("tls.r", ["id:int64!", "v:string"], primary_key=["id"])
    admin.tables.create("tls.s", ["id:int64!", "v:string"], primary_key=["id"])
    admin.write("tls.r", rows, op="upsert")
    admin.write("tls.s", rows[:1], op="upsert")
    admin.access.grant("read", table="tls.r", user="carol")

    # The SDK's lookups go over RESP in TLS and answer like gRPC.
    assert admin.lookup("tls.r", [2, 9, 5]).to_pylist() == [rows[1], rows[4]]

    # redis-py with the CA and a token (AUTH).
    token = token_file.read_text().strip()
    with redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=ca,
                     password=token, socket_timeout=10) as r:
        assert json.loads(r.get("tls.r:3")) == rows[2]
        assert [json.loads(v) for v in r.mget("tls.r:1", "tls.s:1")] == [rows[0], rows[0]]

    # redis-py with carol's certificate and no AUTH: carol, with carol's grants.
    with redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=ca,
                     ssl_certfile=str(tmp_path / "carol.pem"),
                     ssl_keyfile=str(tmp_path / "carol.key"), socket_timeout=10) as carol:
        assert json.loads(carol.get("tls.r:4")) == rows[3]
        with pytest.raises(redis.exceptions.ResponseError, match="lacks `read` on table tls.s"):
            carol.get("tls.s:1")

    # TLS without a certificate or AUTH: NOAUTH, as in plaintext.
    with redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=ca,
                     socket_timeout=10) as nobody:
        with pytest.raises(redis.exceptions.AuthenticationError):
            nobody.get("tls.r:1")
    # A plaintext client: the handshake fails and the connection is closed.
    with redis.Redis(host="127.0.0.1", port=port, password=token, socket_timeout=10) as plain:
        with pytest.raises(redis.exceptions.ConnectionError):
            plain.get("tls.r:1")
    # The SDK without the CA does not trust the server's certificate.
    untrusted = unitable.connect(url, token_file=token_file, resp=f"127.0.0.1:{port}",
                                 retries=0)
    with pytest.raises(unitable.Unavailable, match="TLS with the RESP endpoint"):
        untrusted.lookup("tls.r", [{"id": 1}])  # dict keys: no describe over gRPC first
    for c in (admin, untrusted):
        c.close()


def test_package_type_checks(tmp_path: Path):
    """mypy --strict over the installed package (its settings are in python/pyproject.toml)."""
    pytest.importorskip("mypy", reason="mypy is not installed (scripts/test installs it)")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "python" / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "mypy-cache"), "-p", "unitable"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

"""How the clients reach a gateway: https only (plain http on a loopback address), a token that can go in a
header, a short cause for each transport failure without the token, and request bodies holding NumPy and
pandas values sent as plain JSON."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.client import Federation, Gateway, GatewayUnavailable
from gateway.client_federation import GlmStopped

PURPOSE = "DUO:0000006"
TOKEN = "eyJ0eXAi.SECRET-token-value.sig"
Client = type[Gateway] | type[Federation]


def answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"request_id": "r1", "status": "released", "kind": "count",
                                     "columns": [], "rows": [], "covered": [], "sites": []})  # fmt: skip


class Recorder:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return answer(request)


# -- https only -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", [Gateway, Federation])
@pytest.mark.parametrize(
    "url", ["http://fedgate.site-de.example", "http://10.0.0.5:8000", "HTTP://fedgate.example/prefix/"]
)
def test_plain_http_to_another_host_is_refused_before_any_request(client: Client, url: str) -> None:
    recorder = Recorder()
    with pytest.raises(ValueError, match="allow_insecure_http") as refused:
        client(url, TOKEN, transport=recorder.transport)
    assert "unencrypted" in str(refused.value) and TOKEN not in str(refused.value)
    assert recorder.requests == []


@pytest.mark.parametrize("client", [Gateway, Federation])
@pytest.mark.parametrize(
    "url",
    [
        "https://fedgate.site-de.example",
        "http://127.0.0.1:8000",
        "http://localhost:8000/",
        "http://[::1]:8000",
    ],
)
def test_https_and_loopback_http_are_accepted(client: Client, url: str) -> None:
    recorder = Recorder()
    with client(url, TOKEN, transport=recorder.transport) as gateway:
        gateway.count("cohort", "DSA-TEST-OPEN", PURPOSE)
    assert [r.headers["Authorization"] for r in recorder.requests] == [f"Bearer {TOKEN}"]


@pytest.mark.parametrize("client", [Gateway, Federation])
def test_plain_http_is_sent_when_the_caller_allows_it(client: Client) -> None:
    recorder = Recorder()
    with client(
        "http://fedgate.lan", TOKEN, transport=recorder.transport, allow_insecure_http=True
    ) as gateway:
        gateway.count("cohort", "DSA-TEST-OPEN", PURPOSE)
    assert [r.url.scheme for r in recorder.requests] == ["http"]


@pytest.mark.parametrize(
    "url", ["fedgate.site-de.example", "localhost:8000", "ftp://fedgate.example", "https://"]
)
def test_a_url_without_scheme_or_host_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="must start with https://"):
        Gateway(url, TOKEN, transport=Recorder().transport)


@pytest.mark.parametrize("client", [Gateway, Federation])
@pytest.mark.parametrize("url", ["https://user:S3cret@fedgate.example", "http://user:S3cret@127.0.0.1:8000"])
def test_a_url_holding_a_login_is_refused_so_it_never_replaces_the_token(client: Client, url: str) -> None:
    recorder = Recorder()
    with pytest.raises(ValueError, match="user name or password") as refused:
        client(url, TOKEN, transport=recorder.transport)
    assert "S3cret" not in str(refused.value) and recorder.requests == []


# -- the token --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "hint"),
    [
        ("SECRÉT-token", "printable ASCII"),
        ("SECRET-token\nX-Injected: 1", "printable ASCII"),
        ("SECRET token", "printable ASCII"),
        ("SECRET-token\n", "strip it"),
        ("", "empty"),
    ],
)
def test_a_token_that_cannot_be_a_bearer_token_is_refused_without_showing_it(token: str, hint: str) -> None:
    recorder = Recorder()
    with pytest.raises(ValueError, match=hint) as refused:
        Gateway("https://fedgate.example", token, transport=recorder.transport)
    assert token.strip() == "" or "SECRET" not in str(refused.value)
    assert recorder.requests == []


# -- transport failures -----------------------------------------------------------------------------------


def failing(exc: Exception) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.MockTransport(handler)


def chained(kind: type[httpx.HTTPError], under: BaseException) -> httpx.HTTPError:
    """An httpx error as httpx raises it, over the OS error under it."""
    exc = kind(f"{under} (Authorization: Bearer {TOKEN})")
    exc.__cause__ = under
    return exc


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (chained(httpx.ConnectError, socket.gaierror(-2, "Name or service not known")), "not be resolved"),
        (chained(httpx.ConnectError, ConnectionRefusedError(111, "Connection refused")), "refused"),
        (
            chained(httpx.ConnectError, ssl.SSLCertVerificationError(1, "CERTIFICATE_VERIFY_FAILED")),
            "TLS certificate verification failed",
        ),
        (httpx.ConnectTimeout("timed out"), "timed out connecting"),
        (httpx.ReadTimeout("timed out"), "timed out waiting"),
        (httpx.UnsupportedProtocol("missing an 'http://' or 'https://' protocol"), "http:// or https://"),
        (httpx.RemoteProtocolError("Server disconnected"), "closed the connection"),
    ],
    ids=["dns", "refused", "tls", "connect-timeout", "read-timeout", "scheme", "protocol"],
)
def test_each_transport_failure_says_why_in_a_few_words(exc: Exception, cause: str) -> None:
    site = Gateway("https://fedgate.example", TOKEN, transport=failing(exc))
    with site, pytest.raises(GatewayUnavailable) as failed:
        site.count("cohort", "DSA-TEST-OPEN", PURPOSE)
    assert failed.value.status == 0 and cause in str(failed.value)
    assert TOKEN not in str(failed.value) and TOKEN not in json.dumps(failed.value.problem)


@pytest.fixture
def listening() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """A loopback server running `serve` on each connection; gives its port."""
    servers: list[socket.socket] = []

    def start(serve: Callable[[socket.socket], None]) -> int:
        server = socket.create_server(("127.0.0.1", 0))
        servers.append(server)

        def loop() -> None:
            while True:
                try:
                    connection, _ = server.accept()
                except OSError:
                    return
                with connection:
                    serve(connection)

        threading.Thread(target=loop, daemon=True).start()
        return int(server.getsockname()[1])

    yield start
    for server in servers:
        server.close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def test_a_certificate_that_fails_verification_says_so(
    tmp_path: Path, listening: Callable[[Callable[[socket.socket], None]], int]
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed(tmp_path))

    def handshake(connection: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the client hangs up on the certificate
            context.wrap_socket(connection, server_side=True).close()

    port = listening(handshake)
    site = Gateway(f"https://127.0.0.1:{port}", TOKEN, timeout=5)
    with site, pytest.raises(GatewayUnavailable, match="TLS certificate verification failed"):
        site.count("cohort", "DSA-TEST-OPEN", PURPOSE)


def test_a_refused_connection_and_a_silent_gateway_say_so(
    listening: Callable[[Callable[[socket.socket], None]], int],
) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    site = Gateway(f"http://127.0.0.1:{port}", TOKEN, timeout=5)
    with site, pytest.raises(GatewayUnavailable) as refused:
        site.count("cohort", "DSA-TEST-OPEN", PURPOSE)
    assert f"connection refused by 127.0.0.1:{port}" in str(refused.value)
    answered = threading.Event()

    def silent(connection: socket.socket) -> None:
        answered.wait(2)

    port = listening(silent)
    site = Gateway(f"http://127.0.0.1:{port}", TOKEN, timeout=0.2)
    with site, pytest.raises(GatewayUnavailable) as timed_out:
        site.count("cohort", "DSA-TEST-OPEN", PURPOSE)
    assert f"timed out waiting for 127.0.0.1:{port}'s answer" in str(timed_out.value)
    answered.set()


# -- NumPy and pandas arguments ---------------------------------------------------------------------------


def test_numpy_and_pandas_arguments_are_sent_as_plain_json() -> None:
    recorder = Recorder()
    frame = pd.DataFrame({"age_band": ["<40"], "sex": ["F"], "smoking": [1]})
    with Gateway("https://fedgate.example", TOKEN, transport=recorder.transport) as site:
        site.histogram("cohort", "DSA-TEST-OPEN", PURPOSE, "bmi", np.arange(20, 40, 5))
        site.kaplan_meier("cohort", "DSA-TEST-OPEN", PURPOSE, "survival_days", "event", np.array([30.0, 365]))
        site.crosstab("cohort", "DSA-TEST-OPEN", PURPOSE, group_by=frame.columns[:2])
        site.count("cohort", "DSA-TEST-OPEN", PURPOSE, group_by=np.array(["sex"]))
        value = frame["smoking"].iloc[0]
        site.count("cohort", "DSA-TEST-OPEN", PURPOSE,
                   filters={"column": "smoking", "op": "=", "value": value})  # fmt: skip
    specs = [json.loads(r.content) for r in recorder.requests]
    assert specs[0]["params"]["edges"] == [20, 25, 30, 35]
    assert specs[1]["params"]["edges"] == [30.0, 365.0]
    assert specs[2]["group_by"] == ["age_band", "sex"] and specs[3]["group_by"] == ["sex"]
    assert specs[4]["filters"] == {"column": "smoking", "op": "=", "value": 1}


def test_numpy_glm_levels_and_sites_are_sent_as_plain_json() -> None:
    bodies: list[dict[str, Any]] = []

    def stopped(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"status": "stopped", "iteration": 0, "reasons": ["x"], "sites": []})

    sites = pd.Index(["site-de", "site-fr"])
    fed = Federation("https://fedgate.example", TOKEN, sites=sites, transport=httpx.MockTransport(stopped))
    with fed, pytest.raises(GlmStopped, match="stopped"):
        fed.glm("cohort", "DSA-TEST-OPEN", PURPOSE, "event", "binomial",
                numeric=pd.Index(["bmi"]), categorical={"smoking": np.array([0, 1])},
                max_iterations=np.int64(5))  # fmt: skip
    assert bodies[0]["model"]["categorical"] == [{"column": "smoking", "levels": [0, 1]}]
    assert bodies[0]["model"]["numeric"] == ["bmi"] and bodies[0]["max_iterations"] == 5
    assert bodies[0]["sites"] == ["site-de", "site-fr"]

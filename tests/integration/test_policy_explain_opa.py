"""`fedgate policy explain` at a site that decides with an OPA server: it changes nothing on that server,
and no OPA login ever reaches a message."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from loopback_server import LoopbackServer
from typer.testing import CliRunner

from gateway.cli.policy import app
from gateway.decision import PolicyError, load_bundle
from gateway.decision.opa_server import OpaServerEngine

POLICIES = Path(__file__).resolve().parents[2] / "policies"

REQUEST = {
    "requester": {"sub": "r-1", "org": "org-aphp", "country": "FR", "roles": ["researcher"]},
    "purpose": {"duo": ["DUO:0000006"]},
    "dsa": "DSA-2026-014",
    "dataset": {"id": "ds-diabetes-de", "jurisdiction": "DE", "duo": ["DUO:0000042"], "columns": ["sex"]},
    "query": {"kind": "count", "columns": ["sex"]},
    "destination": {"country": "FR"},
    "now": "2026-05-01T10:00:00Z",
}


class RecordingOpa(LoopbackServer):
    """Answers every request as an empty OPA would, and records each method and path."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                recorder.seen.append(f"{self.command} {self.path}")
                body = b'{"result": []}' if self.command == "GET" else b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer()

            def do_PUT(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def do_DELETE(self) -> None:
                self._answer()

            def do_PATCH(self) -> None:
                self._answer()

        super().__init__(Handler)


@pytest.fixture
def opa() -> Iterator[RecordingOpa]:
    with RecordingOpa() as server:
        yield server


def _site(folder: Path, more: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site.toml"
    path.write_text(
        f'site_id = "site-de"\njurisdiction = "DE"\nstore_url = "duckdb:///store.duckdb"\n'
        f'audit_url = "sqlite:///audit.db"\npolicy_dir = "{POLICIES}"\n'
        f'master_key_env = "FEDGATE_TEST_UNUSED_KEY"\nlog_key_file = "log.key"\n{more}'
    )
    return path


def _explain(config: Path, tmp_path: Path, *options: str) -> tuple[int, str, str]:
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(REQUEST))
    result = CliRunner().invoke(
        app, ["explain", *options, str(config), "--input", str(request_file), "--json"]
    )
    return result.exit_code, result.stdout, result.stderr


def test_explain_at_an_opa_site_neither_writes_to_nor_asks_the_opa_server(
    opa: RecordingOpa, tmp_path: Path
) -> None:
    config = _site(tmp_path, f'policy_engine = "opa"\nopa_url = "{opa.url}"\n')
    code, out, err = _explain(config, tmp_path, "--config")
    assert code == 0, err
    assert opa.seen == []  # no PUT or DELETE over the running gateway's policies; nothing at all
    assert "embedded engine" in err
    # The folder's decision, as an embedded site explains it.
    embedded_code, embedded_out, _ = _explain(_site(tmp_path / "embedded"), tmp_path, "--config")
    assert embedded_code == 0 and json.loads(out) == json.loads(embedded_out)
    assert json.loads(out)["decision"] == "allow"


def test_explain_takes_the_config_as_c(tmp_path: Path) -> None:
    code, out, err = _explain(_site(tmp_path / "site"), tmp_path, "-c")
    assert code == 0, err
    assert json.loads(out)["decision"] == "allow"


def test_explain_refuses_an_opa_login_without_printing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGATE_POLICY_ENGINE", "opa")
    monkeypatch.setenv("FEDGATE_OPA_URL", "http://admin:S3cretPW@127.0.0.1:1")
    code, out, err = _explain(_site(tmp_path / "site"), tmp_path, "--config")
    assert code == 2
    assert "opa_url" in err and "FEDGATE_OPA_URL" in err
    assert "S3cretPW" not in out + err


@pytest.mark.parametrize(
    "url", ["http://admin:S3cretPW@127.0.0.1:1", "http://S3cretPW@127.0.0.1:1", "http://h:1/S3cretPW"]
)
def test_the_opa_engine_never_repeats_a_login_or_path(url: str) -> None:
    bundle = load_bundle(POLICIES, "DE")
    with pytest.raises(PolicyError) as err:
        OpaServerEngine(url, 0.5, bundle)
    assert "S3cretPW" not in str(err.value)


def test_the_opa_server_is_shown_by_scheme_host_and_port() -> None:
    from gateway.decision.opa_server import shown_url

    assert shown_url("http://admin:S3cretPW@opa:8181/v1?token=S3cretPW") == "http://opa:8181"


def test_a_publish_failure_names_the_server_by_host_and_port() -> None:
    bundle = load_bundle(POLICIES, "DE")
    with pytest.raises(PolicyError) as err:
        OpaServerEngine("http://127.0.0.1:1/", 0.5, bundle)
    assert "the OPA server at http://127.0.0.1:1:" in str(err.value)


def test_an_opa_server_on_an_ipv6_address_is_reached(opa: RecordingOpa) -> None:
    class Ipv6Server(HTTPServer):
        address_family = socket.AF_INET6

    try:
        v6 = Ipv6Server(("::1", 0), opa._server.RequestHandlerClass)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here ({exc.strerror})")
    threading.Thread(target=v6.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        bundle = load_bundle(POLICIES, "DE")
        # The recording server is no real OPA; what matters is that the requests reached it.
        with contextlib.suppress(PolicyError):
            OpaServerEngine(f"http://[::1]:{v6.server_address[1]}", 2.0, bundle)
    finally:
        v6.shutdown()
        v6.server_close()
    assert opa.seen and opa.seen[0].startswith("GET /v1/")

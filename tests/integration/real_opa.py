"""A real OPA engine for tests: FEDGATE_TEST_OPA_URL when set, else OPA's Go evaluator behind a loopback API.

`OpaLibraryDataApi` evaluates with OPA's own engine — the Go package github.com/open-policy-agent/opa/v1/rego
(OPA v1.20.2), loaded in-process from the opa-golib-python-bindings wheel — so its answers are OPA's answers,
not regorus'. The HTTP front is ours, NOT `opa run --server`: it serves just the part of OPA's REST API the
gateway uses (GET /v1/policies, GET, PUT and DELETE /v1/policies/<id>, GET and PUT /v1/data/<path>, POST
/v1/data/<path> with {"input": …} → {"result": …}, GET /health) and answers errors in OPA's shape ({"code",
"message"}). Like
OPA's server, a policy upload or delete compiles every module that would remain and is refused (400) when that
fails.
One difference remains: the library runs with strict builtin errors, so a builtin error is an HTTP 500 here
where a default OPA server makes the expression undefined.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
from loopback_server import LoopbackServer

try:
    import opa_bindings
except ImportError:  # the test extra installs it; without it the real-OPA tests skip
    opa_bindings = None

OPA_URL_ENV = "FEDGATE_TEST_OPA_URL"
MISSING = (
    "OPA's engine is not installed (opa-golib-python-bindings; it declares Python >=3.14, so install it with "
    "pip's --ignore-requires-python) and FEDGATE_TEST_OPA_URL names no OPA server"
)


class OpaLibraryDataApi(LoopbackServer):
    """OPA's Go engine served on a free loopback port; policies and data are replaced as OPA's API does."""

    def __init__(self) -> None:
        if opa_bindings is None:
            raise RuntimeError(MISSING)
        self.requests = 0
        self._policies: dict[str, str] = {}
        self._data: dict[str, Any] = {}
        self._engine: Any = None
        # One request at a time: the HTTP server has one thread, and the lock keeps the engine and its
        # inputs consistent for callers that use the Python methods directly.
        self._lock = threading.Lock()
        super().__init__(self._handler())

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        with self._lock:
            self._close_engine()

    def _close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def _build(self, policies: dict[str, str]) -> Any:
        engine = opa_bindings.OpaEngine()
        for policy_id, source in sorted(policies.items()):
            engine.add_policy(policy_id, source)
        engine.add_data(self._data)
        return engine

    def put_policy(self, policy_id: str, source: str) -> None:
        """Compile every module with the new one first, as OPA does, so a broken upload is refused."""
        with self._lock:
            candidate = {**self._policies, policy_id: source}
            engine = self._build(candidate)
            try:
                engine.eval_query("true")  # compiles (parses, type-checks) all modules together
            finally:
                engine.close()
            self._policies = candidate
            self._close_engine()

    def delete_policy(self, policy_id: str) -> bool:
        """Compile the modules left first, as OPA does, so a delete that breaks another module is refused."""
        with self._lock:
            if policy_id not in self._policies:
                return False
            remaining = {k: v for k, v in self._policies.items() if k != policy_id}
            if remaining:
                engine = self._build(remaining)
                try:
                    engine.eval_query("true")
                finally:
                    engine.close()
            self._policies = remaining
            self._close_engine()
            return True

    def policy_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._policies)

    def policy_source(self, policy_id: str) -> str | None:
        with self._lock:
            return self._policies.get(policy_id)

    def put_data(self, path: list[str], value: Any) -> None:
        with self._lock:
            if not path:
                if not isinstance(value, dict):
                    raise ValueError("the root data document must be an object")
                self._data = value
            else:
                node = self._data
                for key in path[:-1]:
                    child = node.get(key)
                    if not isinstance(child, dict):
                        child = node[key] = {}
                    node = child
                node[path[-1]] = value
            self._close_engine()

    def evaluate(self, path: list[str], policy_input: Any = None) -> tuple[bool, Any]:
        """(defined, value) of data.<path>; `policy_input` None leaves input undefined."""
        with self._lock:
            if self._engine is None:
                self._engine = self._build(self._policies)
            try:
                return True, self._engine.eval_document(".".join(path), policy_input)
            except opa_bindings.OpaUndefinedError:
                return False, None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _json(self, status: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _no_content(self) -> None:
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _error(self, status: int, code: str, message: str) -> None:
                self._json(status, {"code": code, "message": message})

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def _path(self, prefix: str) -> list[str] | None:
                route = self.path.split("?")[0]
                if route.rstrip("/") == prefix.rstrip("/"):
                    return []
                if not route.startswith(prefix):
                    return None
                return [p for p in route[len(prefix) :].split("/") if p]

            def do_GET(self) -> None:
                route = self.path.split("?")[0]
                if route == "/health":
                    self._json(200, {})
                elif route.rstrip("/") == "/v1/policies":
                    self._json(200, {"result": [{"id": pid} for pid in api.policy_ids()]})
                elif policy := self._path("/v1/policies/"):
                    source = api.policy_source("/".join(policy))
                    if source is None:
                        self._error(404, "resource_not_found", "no such policy")
                    else:
                        self._json(200, {"result": {"id": "/".join(policy), "raw": source}})
                elif data := self._path("/v1/data/"):
                    try:
                        defined, value = api.evaluate(data)
                    except opa_bindings.OpaError as exc:
                        self._error(500, "internal_error", exc.message)
                        return
                    self._json(200, {"result": value} if defined else {})
                else:
                    self._error(404, "resource_not_found", "not served by this test front")

            def do_PUT(self) -> None:
                body = self._body()
                policy = self._path("/v1/policies/")
                data = self._path("/v1/data/")
                try:
                    if policy:
                        api.put_policy("/".join(policy), body.decode())
                        self._json(200, {})
                    elif data is not None:
                        api.put_data(data, json.loads(body))
                        self._no_content()
                    else:
                        self._error(404, "resource_not_found", "not served by this test front")
                except opa_bindings.OpaError as exc:
                    self._error(400, "invalid_parameter", exc.message)
                except (ValueError, UnicodeDecodeError) as exc:
                    self._error(400, "invalid_parameter", str(exc))

            def do_DELETE(self) -> None:
                policy = self._path("/v1/policies/")
                try:
                    deleted = bool(policy) and api.delete_policy("/".join(policy or []))
                except opa_bindings.OpaError as exc:
                    self._error(400, "invalid_parameter", exc.message)
                    return
                if deleted:
                    self._json(200, {})
                else:
                    self._error(404, "resource_not_found", "no such policy")

            def do_POST(self) -> None:
                path = self._path("/v1/data/")
                body = self._body()
                if path is None:
                    self._error(404, "resource_not_found", "not served by this test front")
                    return
                api.requests += 1
                try:
                    request = json.loads(body or b"{}")
                    if not isinstance(request, dict):
                        raise ValueError("the request body must be an object")
                except ValueError as exc:
                    self._error(400, "invalid_parameter", str(exc))
                    return
                try:
                    defined, value = api.evaluate(path, request.get("input"))
                except opa_bindings.OpaError as exc:
                    self._error(500, "internal_error", exc.message)
                    return
                # OPA leaves "result" out when the document is undefined.
                self._json(200, {"result": value} if defined else {})

        return Handler


def upload_policies(client: httpx.Client, policies: dict[str, str]) -> None:
    """PUT every policy, retrying refused ones while others still go in.

    OPA compiles all stored modules with each upload, so a module that calls functions of one not yet
    uploaded is refused; uploading until nothing more goes in puts any dependency order in.
    """
    pending = dict(policies)
    while pending:
        refused = {}
        for policy_id, source in pending.items():
            answer = client.put(f"/v1/policies/{policy_id}", content=source.encode())
            if answer.status_code != 200:
                refused[policy_id] = answer.text
        if len(refused) == len(pending):
            raise AssertionError(
                f"OPA refuses the policies {sorted(refused)}: {next(iter(refused.values()))}"
            )
        pending = {policy_id: pending[policy_id] for policy_id in refused}


@contextmanager
def real_opa_url() -> Iterator[str]:
    """The URL of a real OPA engine: FEDGATE_TEST_OPA_URL's server, else an `OpaLibraryDataApi`; else skip."""
    external = os.environ.get(OPA_URL_ENV)
    if external:
        yield external.rstrip("/")
        return
    if opa_bindings is None:
        pytest.skip(MISSING)
    with OpaLibraryDataApi() as api:
        yield api.url

"""A stand-in for an OPA server in tests: speaks OPA's REST Data and Policy APIs, evaluates with regorus.

It is NOT OPA. It implements just what the gateway uses (GET /v1/policies, PUT and DELETE /v1/policies/<id>,
PUT /v1/data/<path>, POST /v1/data/<path> with {"input": …} → {"result": …}, GET /health) and can be told to
misbehave the ways a real server or network does, so the OPA-server engine's fail-closed mapping is tested
over real HTTP.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

import regorus
from loopback_server import LoopbackServer

Fault = Literal["http_500", "missing_result", "wrong_shape", "not_json", "slow"] | None


class OpaDataApiStandIn(LoopbackServer):
    """Serves on a free loopback port; `fault` makes every decision request fail one way."""

    def __init__(self, slow_s: float = 1.0) -> None:
        self.fault: Fault = None
        self.slow_s = slow_s
        self.requests = 0
        self.writes = 0  # uploads and deletes of policies and data
        self._policies: dict[str, str] = {}
        self._data: dict[str, Any] = {}
        self._engine: regorus.Engine | None = None
        self._forget = False
        # regorus engines may be used and dropped only on the thread that made them, so the stand-in serves
        # one request at a time on a single thread, which also owns the engine.
        self._lock = threading.Lock()
        super().__init__(self._handler())

    def _serve(self) -> None:
        try:
            super()._serve()
        finally:
            self._engine = None

    def forget_everything(self) -> None:
        """Drop every policy and all data before the next request, as an OPA server that restarted holds
        none of what was uploaded (on the serving thread, which alone may drop the engine)."""
        self._forget = True

    def _forget_if_asked(self) -> None:
        with self._lock:
            if self._forget:
                self._policies.clear()
                self._data.clear()
                self._engine = None
                self._forget = False

    def _put_policy(self, policy_id: str, source: str) -> None:
        with self._lock:
            self._policies[policy_id] = source
            self._engine = None

    def _put_data(self, path: list[str], value: Any) -> None:
        with self._lock:
            node = self._data
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
            self._engine = None

    def _evaluate(self, path: list[str], policy_input: Any) -> tuple[bool, Any]:
        with self._lock:
            if self._engine is None:
                engine = regorus.Engine()
                for policy_id, source in sorted(self._policies.items()):
                    engine.add_policy(policy_id, source)
                engine.add_data(self._data)
                self._engine = engine
            self._engine.set_input(policy_input)
            value = json.loads(self._engine.eval_rule_as_json("data." + ".".join(path)))
        # OPA leaves "result" out when the document is undefined.
        return value != "<undefined>", value

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, doc: Any) -> None:
                self._send(status, json.dumps(doc).encode())

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def _path(self, prefix: str) -> list[str] | None:
                route = self.path.split("?")[0]
                if not route.startswith(prefix):
                    return None
                return [p for p in route[len(prefix) :].split("/") if p]

            def do_GET(self) -> None:
                standin._forget_if_asked()
                route = self.path.split("?")[0]
                if route == "/health":
                    self._json(200, {})
                elif route.rstrip("/") == "/v1/policies":
                    with standin._lock:
                        listed = [{"id": pid, "raw": src} for pid, src in sorted(standin._policies.items())]
                    self._json(200, {"result": listed})
                elif (policy := self._path("/v1/policies/")) is not None:
                    with standin._lock:
                        source = standin._policies.get("/".join(policy))
                    if source is None:
                        self._json(404, {"code": "resource_not_found", "message": "no such policy"})
                    else:
                        self._json(200, {"result": {"id": "/".join(policy), "raw": source}})
                elif (path := self._path("/v1/data/")) is not None and path:
                    # Stored data only (the gateway reads back what it uploaded), not rules' values.
                    with standin._lock:
                        node: Any = standin._data
                        for key in path:
                            node = node.get(key) if isinstance(node, dict) else None
                    self._json(200, {} if node is None else {"result": node})
                else:
                    self._json(404, {"code": "resource_not_found", "message": "not served by the stand-in"})

            def do_DELETE(self) -> None:
                standin._forget_if_asked()
                policy = self._path("/v1/policies/")
                standin.writes += 1
                with standin._lock:
                    found = bool(policy) and standin._policies.pop("/".join(policy or []), None) is not None
                    standin._engine = None
                if found:
                    self._json(200, {})
                else:
                    self._json(404, {"code": "resource_not_found", "message": "no such policy"})

            def do_PUT(self) -> None:
                standin._forget_if_asked()
                body = self._body()
                standin.writes += 1
                if (policy := self._path("/v1/policies/")) is not None:
                    try:
                        # Parse first, as OPA does on upload, so a broken policy is refused and not kept.
                        regorus.Engine().add_policy("/".join(policy), body.decode())
                        standin._put_policy("/".join(policy), body.decode())
                    except RuntimeError as exc:
                        self._json(400, {"code": "invalid_parameter", "message": str(exc).splitlines()[0]})
                        return
                    self._json(200, {})
                elif (path := self._path("/v1/data/")) is not None and path:
                    standin._put_data(path, json.loads(body))
                    self._send(204, b"")
                else:
                    self._json(404, {"code": "resource_not_found", "message": "not served by the stand-in"})

            def do_POST(self) -> None:
                standin._forget_if_asked()
                path = self._path("/v1/data/")
                body = self._body()
                if path is None:
                    self._json(404, {"code": "resource_not_found", "message": "not served by the stand-in"})
                    return
                standin.requests += 1
                fault = standin.fault
                if fault == "slow":
                    time.sleep(standin.slow_s)
                if fault == "http_500":
                    self._json(500, {"code": "internal_error", "message": "stand-in told to fail"})
                    return
                if fault == "not_json":
                    self._send(200, b"<html>proxy error</html>", "text/html")
                    return
                if fault == "missing_result":
                    self._json(200, {})
                    return
                if fault == "wrong_shape":
                    self._json(200, {"result": ["allow"]})
                    return
                try:
                    defined, value = standin._evaluate(path, json.loads(body or b"{}").get("input"))
                except RuntimeError as exc:
                    self._json(500, {"code": "internal_error", "message": str(exc).splitlines()[0]})
                    return
                self._json(200, {"result": value} if defined else {})

        return Handler

"""The OPA-server engine: a real OPA (next to the gateway) asked over its Data API by opa-python-client."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from opa_client import OpaClient

from gateway.decision.bundle import DATA_ROOT, DECISION_PACKAGE, DECISION_RULE, PolicyBundle, is_test_file
from gateway.decision.errors import MalformedDecision, PolicyEngineUnavailable, PolicyError


def shown_url(url: str) -> str:
    """The OPA server's address for messages: scheme, host and port, never a login, path or query."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], "", "", ""))


def _client_for(url: str, timeout_s: float) -> OpaClient:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PolicyError(f"opa_url must be http(s)://host[:port], got {shown_url(url)!r}")
    if "@" in parts.netloc:
        # The client is given the host and port alone: a login in the URL would never reach OPA.
        raise PolicyError("opa_url must not carry a user name or password (user:password@)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise PolicyError(
            f"opa_url must not carry a path or query (the client adds /v1/…), got {shown_url(url)!r}"
        )
    port = parts.port if parts.port else (443 if parts.scheme == "https" else 80)
    # The client writes `http://{host}:{port}`: an IPv6 address keeps its brackets.
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    # No retries: the timeout is the whole budget for a decision, and a failure denies anyway.
    return OpaClient(host=host, port=port, ssl=parts.scheme == "https", timeout=timeout_s, retries=0)


class OpaServerEngine:
    """Asks OPA for `data.fedgate.decision.result`; every client failure becomes a typed error."""

    name = "opa"

    def __init__(self, url: str, timeout_s: float, bundle: PolicyBundle, *, publish: bool = True) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = _client_for(url, timeout_s)
        # Decisions are asked from the event loop's helper threads: each thread keeps a client of its own,
        # since a requests session is not documented as safe to share between threads.
        self._asking = threading.local()
        self._bundle = bundle
        # False while OPA may hold part of a bundle (a publish failed half-way); reload publishes again.
        self.in_sync = True
        if publish and not self.holds(bundle):
            self.publish(bundle)

    @property
    def bundle_digest(self) -> str:
        return self._bundle.digest

    def publish(self, bundle: PolicyBundle) -> None:
        """Upload the bundle's data and policies, so OPA decides with exactly what the gateway validated.

        Data goes first because it carries the bundle digest: if a policy upload then fails, OPA answers
        with a digest the gateway does not expect, and every decision denies until a reload succeeds.
        """
        self.in_sync = False
        try:
            self._client.update_or_create_data(bundle.data_document(), DATA_ROOT)
            self._replace_policies(
                [(f"fedgate/{p}", src) for p, src in bundle.policies if not is_test_file(p)]
            )
        except requests.RequestException as exc:
            raise PolicyEngineUnavailable(
                f"cannot publish policies to the OPA server at {shown_url(self.url)}: {exc}"
            ) from None
        except Exception as exc:  # noqa: BLE001 — the client raises untyped errors; all mean "rejected"
            # opa-python-client raises its own untyped errors (RegoParseError, TypeException, …).
            raise PolicyEngineUnavailable(
                f"the OPA server at {shown_url(self.url)} rejected the bundle: {exc}"
            ) from None
        self.in_sync = True

    def _replace_policies(self, modules: list[tuple[str, str]]) -> None:
        """Remove the modules OPA holds for fedgate, then upload the bundle's.

        OPA compiles every stored module on each upload and delete, so both go in rounds: a module refused
        now (it calls a package not yet uploaded, or one still deleted after it) is tried again in the next
        round. Removing first means a new module never has to compile against an old one (a function renamed
        in one file and its callers in another could otherwise never go in); decisions fail closed meanwhile.
        """
        stale = [pid for pid in self._client.get_policies_list() if pid.startswith("fedgate/")]
        _in_rounds(stale, self._client.delete_policy)
        _in_rounds(modules, lambda m: self._client.update_policy_from_string(m[1], m[0], rego_compat=False))

    def holds(self, bundle: PolicyBundle) -> bool:
        """Whether OPA decides with exactly `bundle` already: its data document, and the bundle's decision
        modules and no other of fedgate's. Another process of the site (a worker of `fedgate serve`) that
        published a change leaves it so, and publishing it again would make every worker's decisions fail
        while its modules are deleted and uploaded. Any doubt (an error, anything different) is no."""
        return self._held(bundle) is True

    def _held(self, bundle: PolicyBundle) -> bool | None:
        """`holds`, with None when OPA could not be asked (unreachable, slow, an error status)."""
        wanted = {f"fedgate/{p}": src for p, src in bundle.policies if not is_test_file(p)}
        try:
            held = sorted(pid for pid in self._client.get_policies_list() if pid.startswith("fedgate/"))
            if held != sorted(wanted):
                return False
            if self._client.get_data(DATA_ROOT).get("result") != json.loads(
                json.dumps(bundle.data_document())
            ):
                return False
            return all(
                self._client.get_policy(pid).get("result", {}).get("raw") == wanted[pid] for pid in held
            )
        except requests.RequestException:
            return None
        except Exception:  # noqa: BLE001 - the client's errors are untyped; not knowing means publish
            return False

    def replace_bundle(self, bundle: PolicyBundle) -> None:
        held = self._held(bundle)
        if held is None and bundle.digest == self._bundle.digest:
            # Giving the same bundle again after a failed decision, to a server that cannot even say what
            # it holds (slow, down): publishing would delete every module of a server that may still hold
            # them all, and every worker's decisions would deny meanwhile. The point tries again later.
            raise PolicyEngineUnavailable("the OPA server could not be asked which bundle it holds")
        if not held:
            self.publish(bundle)
        self._bundle = bundle
        self.in_sync = True

    def evaluate(self, policy_input: Mapping[str, Any]) -> object:
        """OPA's result for the input. Any failure (no answer, an error status, no decision, another bundle's
        decision) also marks the engine out of step: an OPA server that restarted has lost the bundle the
        gateway uploaded, and the decision point publishes it again (`PolicyDecisionPoint.current`)."""
        client: OpaClient | None = getattr(self._asking, "client", None)
        if client is None:
            client = self._asking.client = _client_for(self.url, self.timeout_s)
        try:
            result = self._result(client, policy_input)
        except Exception:
            self.in_sync = False
            raise
        if not isinstance(result, dict) or result.get("bundle_digest") != self._bundle.digest:
            self.in_sync = False  # decide() refuses the answer; the bundle is published again
        return result

    def _result(self, client: OpaClient, policy_input: Mapping[str, Any]) -> object:
        # The server's address stays out of these messages: they reach the researcher and the audit log.
        try:
            answer = client.query_rule(dict(policy_input), DECISION_PACKAGE, DECISION_RULE)
        except requests.Timeout:
            raise PolicyEngineUnavailable(
                f"the OPA server did not answer within {self.timeout_s} s"
            ) from None
        except requests.ConnectionError:
            raise PolicyEngineUnavailable("the OPA server is unreachable") from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise PolicyEngineUnavailable(f"the OPA server answered HTTP {status}") from None
        except ValueError:
            raise MalformedDecision("the OPA server answered with something that is not JSON") from None
        if not isinstance(answer, dict):
            raise MalformedDecision("the OPA server's answer is not a JSON object")
        if "result" not in answer:
            raise MalformedDecision(
                f"the OPA server has no data.{DECISION_PACKAGE}.{DECISION_RULE} for this input"
            )
        return answer["result"]


def _in_rounds(items: list[Any], action: Callable[[Any], object]) -> None:
    """Apply `action` to every item, retrying refused ones while a round gets any through; a round that
    gets none through raises its last refusal. Connection failures are raised at once."""
    pending = items
    while pending:
        refused: list[Any] = []
        last: Exception | None = None
        for item in pending:
            try:
                action(item)
            except requests.RequestException:
                raise
            except Exception as exc:  # noqa: BLE001 — the client's errors are untyped; retried, then raised
                refused.append(item)
                last = exc
        if len(refused) == len(pending):
            assert last is not None
            raise last
        pending = refused

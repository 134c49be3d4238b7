"""The OPA-server engine over real HTTP: same answers as the embedded engine, and every failure denies.

Runs against `OpaDataApiStandIn` (a stand-in, not OPA) and against a real OPA: FEDGATE_TEST_OPA_URL's server
when set (e.g. http://127.0.0.1:8181 from `opa run --server`), else OPA's own Go engine behind a loopback
front (`real_opa.OpaLibraryDataApi`).
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from decision_corpus import corpus
from opa_standin import OpaDataApiStandIn
from policy_helpers import policy_settings
from real_opa import real_opa_url

from gateway.decision import (
    Decision,
    PolicyBundle,
    PolicyDecisionPoint,
    PolicyEngineUnavailable,
    decide,
    load_bundle,
)
from gateway.decision import point as point_module
from gateway.decision.embedded import EmbeddedEngine
from gateway.decision.opa_server import OpaServerEngine
from gateway.settings import SiteSettings

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture(scope="module")
def bundle() -> PolicyBundle:
    return load_bundle(POLICIES, "DE")


@pytest.fixture
def standin() -> Iterator[OpaDataApiStandIn]:
    with OpaDataApiStandIn(slow_s=1.0) as server:
        yield server


@pytest.fixture(params=["stand-in", "real OPA"])
def opa_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "real OPA":
        with real_opa_url() as url:
            yield url
        return
    with OpaDataApiStandIn() as server:
        yield server.url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_opa_engine_decides_like_the_embedded_engine_on_the_corpus(
    opa_url: str, bundle: PolicyBundle
) -> None:
    opa = OpaServerEngine(opa_url, 5.0, bundle)
    embedded = EmbeddedEngine(bundle)
    inputs = corpus(250)
    answers = [(decide(embedded, i), decide(opa, i)) for i in inputs]
    for request, (local, remote) in zip(inputs, answers, strict=True):
        assert remote == local, request.model_dump_json()
    kinds = {local.decision for local, _ in answers}
    assert kinds == {"allow", "deny", "needs_approval"}
    assert not any(r.startswith("policy evaluation failed") for local, _ in answers for r in local.reasons)


def test_opa_engine_reports_the_bundle_digest(opa_url: str, bundle: PolicyBundle) -> None:
    decision = decide(OpaServerEngine(opa_url, 5.0, bundle), corpus(1)[0])
    assert decision.bundle_digest == bundle.digest


def _assert_failed_closed(decision: Decision, fragment: str) -> None:
    assert decision.decision == "deny"
    assert decision.obligations is None
    assert len(decision.reasons) == 1
    assert decision.reasons[0].startswith("policy evaluation failed: ")
    assert fragment in decision.reasons[0]


def test_connection_refused_denies(bundle: PolicyBundle) -> None:
    port = _free_port()
    engine = OpaServerEngine(f"http://127.0.0.1:{port}", 1.0, bundle, publish=False)
    failed = decide(engine, corpus(1)[0])
    _assert_failed_closed(failed, "is unreachable")
    # The reason reaches the researcher and the audit log: the server's address stays out of it.
    assert str(port) not in failed.reasons[0] and "127.0.0.1" not in failed.reasons[0]


def test_publishing_to_an_unreachable_server_raises(bundle: PolicyBundle) -> None:
    with pytest.raises(PolicyEngineUnavailable, match="cannot publish"):
        OpaServerEngine(f"http://127.0.0.1:{_free_port()}", 1.0, bundle)


def test_timeout_denies(standin: OpaDataApiStandIn, bundle: PolicyBundle) -> None:
    engine = OpaServerEngine(standin.url, 0.2, bundle)
    standin.fault = "slow"
    _assert_failed_closed(decide(engine, corpus(1)[0]), "did not answer within 0.2 s")


@pytest.mark.parametrize(
    ("fault", "fragment"),
    [
        ("http_500", "answered HTTP 500"),
        ("missing_result", "has no data.fedgate.decision.result"),
        ("wrong_shape", "answered a list, not a decision object"),
        ("not_json", "not JSON"),
    ],
)
def test_server_failures_deny(
    standin: OpaDataApiStandIn, bundle: PolicyBundle, fault: str, fragment: str
) -> None:
    engine = OpaServerEngine(standin.url, 2.0, bundle)
    allowed = next(i for i in corpus(200) if decide(engine, i).decision == "allow")
    standin.fault = fault  # type: ignore[assignment]
    _assert_failed_closed(decide(engine, allowed), fragment)


def test_server_running_another_bundle_denies(standin: OpaDataApiStandIn, bundle: PolicyBundle) -> None:
    OpaServerEngine(standin.url, 2.0, bundle)
    other = load_bundle(POLICIES, "FR")
    stale = OpaServerEngine(standin.url, 2.0, other, publish=False)
    _assert_failed_closed(decide(stale, corpus(1)[0]), f"not the loaded bundle {other.digest[:12]}")


def _opa_settings(url: str, tmp_path: Path, policy_dir: Path = POLICIES) -> SiteSettings:
    return policy_settings(policy_dir, tmp_path, policy_engine="opa", opa_url=url, opa_timeout_s=2.0)


def test_decision_point_uses_the_opa_server_from_settings(standin: OpaDataApiStandIn, tmp_path: Path) -> None:
    settings = _opa_settings(standin.url, tmp_path)
    point = PolicyDecisionPoint(settings)
    assert point.engine.name == "opa"
    before = standin.requests
    decisions = [point.decide(i) for i in corpus(20)]
    assert standin.requests == before + 20
    assert all(d.bundle_digest == point.bundle.digest for d in decisions)


def test_reload_the_server_cannot_take_keeps_the_last_good_bundle(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    request = corpus(1)[0]
    with OpaDataApiStandIn() as server:
        point = PolicyDecisionPoint(_opa_settings(server.url, tmp_path, folder))
        good = point.bundle.digest
        assert point.decide(request).bundle_digest == good
    lib = folder / "lib" / "lib.rego"
    lib.write_text(lib.read_text() + "\n# a steward's note\n")
    # The server is gone: publishing the new bundle fails, and the point keeps the bundle it had.
    with pytest.raises(PolicyEngineUnavailable, match="cannot publish"):
        point.reload()
    assert point.bundle.digest == good
    failed = point.decide(request)
    assert failed.decision == "deny"
    assert failed.reasons[0].startswith("policy evaluation failed: ")


def test_a_bundle_opa_already_holds_is_not_published_again(
    standin: OpaDataApiStandIn, bundle: PolicyBundle
) -> None:
    # Two workers of one site share an OPA server: the one that changed the policy publishes it, and the
    # other, reloading, finds it there. Publishing it again would delete and upload every module while the
    # first worker decides, and those decisions would fail.
    first = OpaServerEngine(standin.url, 2.0, bundle)
    published = standin.writes
    assert published > 0
    second = OpaServerEngine(standin.url, 2.0, bundle)  # a worker starting beside it
    assert standin.writes == published
    changed = load_bundle(POLICIES, "FR")
    first.replace_bundle(changed)
    published = standin.writes
    second.replace_bundle(changed)
    assert standin.writes == published
    request = corpus(1)[0]
    assert decide(second, request) == decide(first, request) == decide(EmbeddedEngine(changed), request)
    assert decide(second, request).bundle_digest == changed.digest


def test_a_bundle_opa_holds_only_in_part_is_published(opa_url: str, bundle: PolicyBundle) -> None:
    engine = OpaServerEngine(opa_url, 5.0, bundle)
    assert engine.holds(bundle)
    module = next(p for p, _ in bundle.policies if not p.endswith("_test.rego"))
    with httpx.Client(base_url=opa_url) as opa:
        source = opa.get(f"/v1/policies/fedgate/{module}").json()["result"]["raw"]
        # The same module with one more comment line: OPA no longer holds exactly the bundle.
        assert opa.put(f"/v1/policies/fedgate/{module}", content=f"{source}\n# edited\n").status_code == 200
        assert not engine.holds(bundle)
        engine.replace_bundle(bundle)
        assert engine.holds(bundle)
        # Data of another bundle under the same modules: not held either.
        other = load_bundle(POLICIES, "FR")
        assert not engine.holds(other)
        assert opa.put(
            "/v1/policies/fedgate/zz_extra.rego", content="package fedgate.zz\n\nx := 1\n"
        ).is_success
        assert not engine.holds(bundle), "a module the bundle does not have"
    request = corpus(1)[0]
    engine.replace_bundle(bundle)
    assert decide(engine, request) == decide(EmbeddedEngine(bundle), request)


def test_an_opa_server_that_restarted_empty_is_given_the_bundle_again(
    standin: OpaDataApiStandIn, tmp_path: Path
) -> None:
    point = PolicyDecisionPoint(_opa_settings(standin.url, tmp_path))
    request = corpus(1)[0]
    before = point.decide(request)
    assert not before.reasons or not before.reasons[0].startswith("policy evaluation failed")
    # OPA restarts: the bundle the gateway uploaded over its REST API is gone.
    standin.forget_everything()
    lost = point.decide(request)
    assert lost.decision == "deny" and lost.reasons[0].startswith("policy evaluation failed: ")
    published = standin.writes
    # The next decision gives OPA the bundle again first; nobody had to change the policy or restart.
    assert point.decide(request) == before
    assert standin.writes > published


def test_an_engine_out_of_step_is_given_the_bundle_at_most_once_a_second(
    standin: OpaDataApiStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point = PolicyDecisionPoint(_opa_settings(standin.url, tmp_path))
    reloads = []
    reload = point.reload

    def counted() -> PolicyBundle:
        reloads.append(time.monotonic())
        return reload()

    monkeypatch.setattr(point, "reload", counted)
    # A long wait between checks, so that a slow machine cannot make ten decisions outlast it.
    monkeypatch.setattr(point_module, "RETRY_FAILED_RELOAD_S", 60.0)
    request = corpus(1)[0]
    standin.fault = "http_500"  # every decision fails, though OPA holds the bundle
    published = standin.writes
    decisions = [point.decide(request) for _ in range(10)]
    reason = "policy evaluation failed: the OPA server answered HTTP 500"
    assert all(d.reasons[0] == reason for d in decisions)
    # The first failure marks the engine out of step and the next decision checks what OPA holds; the
    # failures after that wait before another check. OPA held the bundle: nothing was published.
    assert len(reloads) == 1
    assert standin.writes == published
    monkeypatch.setattr(point_module, "RETRY_FAILED_RELOAD_S", 0.0)  # the wait is over
    point.decide(request)
    assert len(reloads) == 2


def test_a_server_that_cannot_say_what_it_holds_is_not_published_to_again(
    standin: OpaDataApiStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One decision failed (the engine is out of step), and OPA is too slow to list its modules when the
    # point checks: publishing the same bundle again would delete every module of a server that may hold
    # them all, and every worker would deny meanwhile. Nothing is published; decisions go on.
    import requests

    point = PolicyDecisionPoint(_opa_settings(standin.url, tmp_path))
    request = corpus(1)[0]
    before = point.decide(request)
    standin.fault = "http_500"
    assert point.decide(request).reasons[0].startswith("policy evaluation failed")
    standin.fault = None

    def slow() -> list[str]:
        raise requests.ReadTimeout("the OPA server did not answer in time")

    engine = point.engine
    assert isinstance(engine, OpaServerEngine)
    monkeypatch.setattr(engine._client, "get_policies_list", slow)
    published = standin.writes
    assert point.decide(request) == before
    assert standin.writes == published

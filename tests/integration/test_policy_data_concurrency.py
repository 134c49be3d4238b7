"""Policy data replaced through the API while the site's workers and stewards act at once: each change names
the bundle it replaced, a replacement based on an old read is refused (If-Match), a change the log missed
is recorded at the next start, and a file broken on disk is named as such."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
from gateway_site import Site, bearer, logged_entries, running_gateway, serving, verify_exported_log
from oidc_issuer import LoopbackTestIssuer
from test_serve_workers import _served

from gateway.app import create_app
from gateway.decision import load_bundle


def _changes(site: Site) -> list[dict[str, str]]:
    return [e["payload"] for e in logged_entries(site.settings) if e["type"] == "policy.changed"]


def test_a_replacement_based_on_an_old_read_is_refused_with_412(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    first, second = bearer(idp, "steward", sub="steward-1"), bearer(idp, "steward", sub="steward-2")
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        read = http.get("/v1/steward/policy-data/agreements", headers=first)
        tag = read.headers["ETag"]
        listed = http.get("/v1/steward/policy-data", headers=first).json()["bundle_digest"]
        assert tag == f'"{listed}"'
        suspended, retitled = read.json(), read.json()
        suspended["DSA-TEST-OPEN"]["suspended"] = True
        done = http.put(
            "/v1/steward/policy-data/agreements", json=suspended, headers={**first, "If-Match": tag}
        )
        assert done.status_code == 200, done.text
        assert done.headers["ETag"] == f'"{done.json()["bundle_digest"]}"'
        retitled["DSA-TEST-DP"]["title"] = "retitled"
        late = http.put(
            "/v1/steward/policy-data/agreements", json=retitled, headers={**second, "If-Match": tag}
        )
        assert late.status_code == 412, late.text
        assert late.headers["content-type"].startswith("application/problem+json")
        assert late.json()["field"] == "If-Match"
        # Audited as what it is: a precondition the steward set, not a conflict of the site's state.
        (refused,) = [e for e in logged_entries(tmp_site.settings) if e["type"] == "request.refused"]
        assert refused["payload"]["refusal"] == "precondition_failed"
        assert refused["payload"]["field"] == "If-Match"
        now = http.get("/v1/steward/policy-data/agreements", headers=first)
        assert now.json()["DSA-TEST-OPEN"]["suspended"] is True and now.headers["ETag"] != tag
        # Without If-Match the last writer wins, as before.
        unconditional = http.put("/v1/steward/policy-data/agreements", json=now.json(), headers=second)
        assert unconditional.status_code == 200
        documented = http.get("/openapi.json").json()["paths"]["/v1/steward/policy-data/{name}"]["put"]
    assert "412" in documented["responses"] and "If-Match" in documented["description"]


def test_two_workers_chain_their_changes_and_answer_with_the_folders_bundle(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    steward = bearer(idp, "steward", sub="steward-1")
    with _served(tmp_site, workers=2) as (_, url):

        def call(method: str, path: str, **kwargs: object) -> httpx.Response:
            with httpx.Client(base_url=url, timeout=60) as http:  # a new connection, dealt in turn
                return http.request(method, path, headers=steward, **kwargs)  # type: ignore[arg-type]

        agreements = call("GET", "/v1/steward/policy-data/agreements").json()
        organisations = call("GET", "/v1/steward/policy-data/organisations").json()
        agreements["DSA-TEST-OPEN"]["title"] = "changed first"
        one = call("PUT", "/v1/steward/policy-data/agreements", json=agreements).json()
        next(iter(organisations.values()))["name"] = "changed second"
        two = call("PUT", "/v1/steward/policy-data/organisations", json=organisations).json()
        listed = {call("GET", "/v1/steward/policy-data").json()["bundle_digest"] for _ in range(4)}
    assert two["previous_digest"] == one["bundle_digest"]
    assert listed == {two["bundle_digest"]}
    chain = _changes(tmp_site)
    assert [c["previous_digest"] for c in chain[1:]] == [c["bundle_digest"] for c in chain[:-1]]


def test_a_change_made_but_not_recorded_is_recorded_at_the_next_start(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    steward = bearer(idp, "steward", sub="steward-1")
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        agreements = http.get("/v1/steward/policy-data/agreements", headers=steward).json()
        agreements["DSA-TEST-OPEN"]["title"] = "on record"
        assert http.put("/v1/steward/policy-data/agreements", json=agreements, headers=steward).is_success
    # The files were changed by hand while the gateway was down.
    agreements["DSA-TEST-OPEN"]["suspended"] = True
    (tmp_site.settings.policy_dir / "data/agreements.json").write_text(json.dumps(agreements))
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        running = http.get("/healthz").json()["policy_bundle"]
    with running_gateway(tmp_site.settings):
        pass  # a further start finds the log in step: nothing more is recorded
    *_, before, found = _changes(tmp_site)
    assert found == {
        "bundle_digest": f"sha256:{running}", "previous_digest": before["bundle_digest"],
        "change": "found_at_startup",
    }  # fmt: skip
    assert _changes(tmp_site)[-1] == found and len([c for c in _changes(tmp_site) if c == found]) == 1


def test_a_change_recorded_but_never_put_in_place_is_recorded_back_at_the_next_start(
    tmp_site: Site, tmp_path: Path
) -> None:
    folder = tmp_site.settings.policy_dir
    agreements = json.loads((folder / "data/agreements.json").read_text())
    agreements["DSA-TEST-OPEN"]["suspended"] = True
    scratch = tmp_path / "policies"
    shutil.copytree(folder, scratch)
    (scratch / "data/agreements.json").write_text(json.dumps(agreements))
    never_installed = load_bundle(scratch, tmp_site.settings.jurisdiction).digest
    app = create_app(tmp_site.settings)
    with serving(app) as url:
        in_force = httpx.get(f"{url}/healthz", timeout=60).json()["policy_bundle"]
        # The gateway died after recording a replacement and before renaming its file into place: what it
        # recorded never decided anything, and its temporary file is left beside the documents.
        (folder / "data/.agreements.k2j4h1.json").write_text(json.dumps(agreements))
        payload = {
            "bundle_digest": f"sha256:{never_installed}", "previous_digest": f"sha256:{in_force}",
            "change": "dsa", "name": "agreements",
        }  # fmt: skip
        app.state.runtime.record_policy_change(payload, principal=None, wait_s=30)
    with running_gateway(tmp_site.settings) as url:
        running = httpx.get(f"{url}/healthz", timeout=60).json()["policy_bundle"]
    *_, recorded, found = _changes(tmp_site)
    assert running == in_force and recorded == payload
    assert found == {
        "bundle_digest": f"sha256:{in_force}", "previous_digest": f"sha256:{never_installed}",
        "change": "found_at_startup",
    }  # fmt: skip
    assert not list((folder / "data").glob(".*.json"))


def test_workers_starting_together_record_the_bundle_in_force_once(
    tmp_site: Site, idp: LoopbackTestIssuer, tmp_path: Path
) -> None:
    config = tmp_site.config.read_text()
    # A new site's log holds no policy change: the first start records the bundle it starts under.
    with _served(tmp_site, workers=2) as (_, url):
        running = httpx.get(f"{url}/healthz", timeout=60).json()["policy_bundle"]
    assert _changes(tmp_site) == [{"bundle_digest": f"sha256:{running}", "change": "found_at_startup"}]
    # A change by hand is recorded once, whichever worker looks first.
    agreements_file = tmp_site.settings.policy_dir / "data/agreements.json"
    agreements = json.loads(agreements_file.read_text())
    agreements["DSA-TEST-OPEN"]["title"] = "changed by hand"
    agreements_file.write_text(json.dumps(agreements))
    tmp_site.config.write_text(config)  # without the [server] table the first serve added
    with _served(tmp_site, workers=2) as (_, url), httpx.Client(base_url=url, timeout=60) as http:
        now = http.get("/healthz").json()["policy_bundle"]
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor"))
    first, found = _changes(tmp_site)
    assert found == {
        "bundle_digest": f"sha256:{now}", "previous_digest": first["bundle_digest"],
        "change": "found_at_startup",
    }  # fmt: skip
    assert export.status_code == 200
    verify_exported_log(export.content, tmp_site.settings, tmp_path)


def test_a_file_broken_on_disk_is_named_and_blamed_on_the_disk(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    steward = bearer(idp, "steward", sub="steward-1")
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        agreements = http.get("/v1/steward/policy-data/agreements", headers=steward).json()
        site_file = tmp_site.settings.policy_dir / "data/site.json"
        site_file.write_text(site_file.read_text().replace('"defaults": {', '"defaults": {,', 1))
        read = http.get("/v1/steward/policy-data/site", headers=steward)
        put = http.put("/v1/steward/policy-data/agreements", json=agreements, headers=steward)
    for answer in (read, put):
        assert answer.status_code == 503, answer.text
        problem = answer.json()
        assert "site.json" in problem["detail"] and "policy folder" in problem["detail"]
        assert str(tmp_site.settings.policy_dir) not in answer.text and problem.get("field") != "body"


def test_a_replacement_of_the_file_broken_on_disk_repairs_it(tmp_site: Site, idp: LoopbackTestIssuer) -> None:
    steward = bearer(idp, "steward", sub="steward-1")
    agreements_file = tmp_site.settings.policy_dir / "data/agreements.json"
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        agreements = http.get("/v1/steward/policy-data/agreements", headers=steward).json()
        organisations = http.get("/v1/steward/policy-data/organisations", headers=steward).json()
        in_force = http.get("/v1/steward/policy-data", headers=steward).json()["bundle_digest"]
        agreements_file.write_text(agreements_file.read_text().replace("{", "{,", 1))  # a hand edit
        other = http.put("/v1/steward/policy-data/organisations", json=organisations, headers=steward)
        agreements["DSA-TEST-OPEN"]["suspended"] = True
        # The folder holds no version a tag could name, not even the bundle still in force.
        tagged = http.put(
            "/v1/steward/policy-data/agreements", json=agreements,
            headers={**steward, "If-Match": f'"{in_force}"'},
        )  # fmt: skip
        repaired = http.put("/v1/steward/policy-data/agreements", json=agreements, headers=steward)
        query = {"dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]}}
        denied = http.post("/v1/queries", json={**query, "kind": "count"}, headers=bearer(idp, "researcher"))
        read = http.get("/v1/steward/policy-data/agreements", headers=steward)
    assert other.status_code == 503 and "agreements.json" in other.json()["detail"]
    assert tagged.status_code == 412 and tagged.json()["field"] == "If-Match", tagged.text
    assert repaired.status_code == 200, repaired.text
    new = repaired.json()["bundle_digest"]
    assert repaired.json()["previous_digest"] == in_force and read.headers["ETag"] == f'"{new}"'
    assert json.loads(agreements_file.read_text()) == agreements == read.json()
    assert denied.status_code == 403 and "suspended" in denied.json()["detail"]
    assert _changes(tmp_site)[-1] == {
        "bundle_digest": f"sha256:{new}", "previous_digest": f"sha256:{in_force}",
        "change": "dsa", "name": "agreements",
    }  # fmt: skip

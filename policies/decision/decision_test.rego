package fedgate.decision_test

import rego.v1

import data.fedgate.decision
import data.fedgate.fixtures_test as fx

_result(req, d) := r if {
	r := decision.result with input as req with data.fedgate_data as d
}

test_allow_carries_reasons_and_obligations if {
	r := _result(fx.request, fx.policy_data)
	r.decision == "allow"
	"DSA-T-1 lets org-b run count queries on dataset ds-1" in r.reasons
	r.obligations.min_cell_count == 20
	r.obligations.round_to == 5
	r.obligations.consent_filter.consent_column == "consent_duo"
	r.obligations.publication_moratorium_until == null
}

test_deny_carries_every_clause_and_no_obligations if {
	req := fx.request_with({"now": "2026-07-02T00:00:00Z", "requester": {"org": "org-x"}})
	r := _result(req, fx.policy_data)
	r.decision == "deny"
	r.reasons == [
		"DSA-T-1 expired on 2026-06-30",
		"organisation org-x is not a party to DSA-T-1",
		"organisation org-x is not registered with this site, so the country the answer would reach cannot be checked",
	]
	r.obligations == null
}

test_needs_approval_names_the_clause if {
	r := _result(fx.request_with({"query": {"kind": "glm"}}), fx.policy_data)
	r.decision == "needs_approval"
	r.reasons == ["DSA-T-1 requires a steward's approval for glm queries"]
	r.obligations.glm_min_rows == 10
}

test_deny_wins_over_needs_approval if {
	r := _result(fx.request_with({"query": {"kind": "glm"}, "destination": {"country": "KP"}}), fx.policy_data)
	r.decision == "deny"
	r.reasons == ["transfers to KP (the destination's country) are blocked by this site"]
}

# An ethics approval id the agreement does not list waits for a steward, who sees it in the queued request;
# the reasons do not repeat it, and the consent filter admits the patients who need it once approved.
test_unlisted_ethics_approval_needs_a_stewards_approval if {
	req := fx.request_with({"dataset": {"duo": ["DUO:0000042", "DUO:0000021"]}, "purpose": {"ethics_approval_id": "EC-2026-999"}})
	r := _result(req, fx.policy_data)
	r.decision == "needs_approval"
	r.reasons == ["dataset ds-1 requires ethics approval (DUO:0000021) and DSA-T-1 does not list the purpose's approval id: a steward must verify it"]
	"DUO:0000021" in r.obligations.consent_filter.allowed_codes
}

test_deny_wins_over_an_unlisted_ethics_approval if {
	req := fx.request_with({
		"dataset": {"duo": ["DUO:0000042", "DUO:0000021"]}, "purpose": {"ethics_approval_id": "EC-2026-999"},
		"destination": {"country": "KP"},
	})
	_result(req, fx.policy_data).reasons == ["transfers to KP (the destination's country) are blocked by this site"]
}

test_site_approval_kinds_need_approval if {
	d := fx.data_with({"site": {"approval_kinds": ["summary"]}})
	r := _result(fx.request_with({"query": {"kind": "summary"}}), d)
	r.decision == "needs_approval"
	r.reasons == ["this site requires a steward's approval for summary queries"]
}

test_deny_kind_the_site_does_not_offer if {
	d := fx.data_with({"agreements": {"DSA-T-1": {"query_kinds": ["count", "histogram"]}}})
	r := _result(fx.request_with({"query": {"kind": "histogram"}}), d)
	r.reasons == ["this site does not offer histogram queries"]
}

test_deny_requester_without_researcher_role if {
	r := _result(fx.request_with({"requester": {"roles": ["steward"]}}), fx.policy_data)
	r.reasons == ["the requester does not hold the researcher role"]
}

test_deny_malformed_request_on_shape_alone if {
	r := _result({"requester": {"sub": "x"}}, fx.policy_data)
	r.decision == "deny"
	"the request has no input.dsa" in r.reasons
	"the request has no input.purpose.duo list" in r.reasons
	every reason in r.reasons {
		startswith(reason, "the request has no input.")
	}
}

test_deny_empty_request if {
	r := _result({}, fx.policy_data)
	r.decision == "deny"
	count(r.reasons) == 11
}

test_deny_unparseable_time if {
	r := _result(fx.request_with({"now": "2026-05-01 10:00"}), fx.policy_data)
	r.reasons == ["input.now is not an RFC 3339 timestamp"]
}

test_deny_on_consent_reaches_the_decision if {
	r := _result(fx.request_with({"dataset": {"duo": ["DUO:0000011"]}}), fx.policy_data)
	r.reasons == ["the consent of dataset ds-1 does not cover the purpose DUO:0000006 (health or medical or biomedical research)"]
}

test_open_moratorium_becomes_an_obligation if {
	req := fx.request_with({"dataset": {"duo": ["DUO:0000042", "DUO:0000024"], "moratorium_until": "2026-12-31"}})
	_result(req, fx.policy_data).obligations.publication_moratorium_until == "2026-12-31"
}

test_missing_bundle_digest_reads_empty if {
	d := json.patch(fx.policy_data, [{"op": "remove", "path": "/meta"}])
	_result(fx.request, d).bundle_digest == ""
}

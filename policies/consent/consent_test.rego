package fedgate.consent_test

import rego.v1

import data.fedgate.consent
import data.fedgate.fixtures_test as fx

_deny(req, d) := reasons if {
	reasons := consent.deny with input as req with data.fedgate_data as d
}

_denied(req, d, fragment) if {
	some reason in _deny(req, d)
	contains(reason, fragment)
}

_dataset(codes) := fx.request_with({"dataset": {"duo": codes}})

_filter(req, d) := f if {
	f := consent.consent_filter with input as req with data.fedgate_data as d
}

_approval(req, d) := reasons if {
	reasons := consent.needs_approval with input as req with data.fedgate_data as d
}

_ethics_dataset_with_id(id) := object.union(_dataset(["DUO:0000042", "DUO:0000021"]), {"purpose": {"ethics_approval_id": id}})

_unlisted_ethics_approval := "dataset ds-1 requires ethics approval (DUO:0000021) and DSA-T-1 does not list the purpose's approval id: a steward must verify it"

# --- dataset consent against the purpose -----------------------------------------------------------------

test_allow_when_general_research_consent_covers_medical_purpose if {
	count(_deny(fx.request, fx.policy_data)) == 0
	count(consent.allow) == 1 with input as fx.request with data.fedgate_data as fx.policy_data
}

test_deny_when_dataset_consent_does_not_cover_purpose if {
	req := fx.request_with({"dataset": {"duo": ["DUO:0000006"]}, "purpose": {"duo": ["DUO:0000011"]}})
	"the consent of dataset ds-1 does not cover the purpose DUO:0000011 (population origins or ancestry research only)" in _deny(req, fx.policy_data)
}

test_deny_when_disease_specific_consent_meets_general_purpose if {
	req := fx.request_with({"dataset": {"duo": ["DUO:0000007"], "diseases": ["MONDO:0005015"]}})
	_denied(req, fx.policy_data, "does not cover the purpose DUO:0000006")
}

test_allow_disease_specific_purpose_for_narrower_disease if {
	req := fx.request_with({
		"dataset": {"duo": ["DUO:0000007"], "diseases": ["MONDO:0005015"]},
		"purpose": {"duo": ["DUO:0000007"], "disease": "MONDO:0005148"},
	})
	count(_deny(req, fx.policy_data)) == 0
}

test_deny_disease_specific_purpose_for_other_disease if {
	req := fx.request_with({
		"dataset": {"duo": ["DUO:0000007"], "diseases": ["MONDO:0005015"]},
		"purpose": {"duo": ["DUO:0000007"], "disease": "MONDO:0007254"},
	})
	_denied(req, fx.policy_data, "does not cover the purpose DUO:0000007")
}

test_deny_disease_specific_purpose_without_disease if {
	req := fx.request_with({"purpose": {"duo": ["DUO:0000007"]}})
	"disease-specific research (DUO:0000007) needs a disease term in the purpose" in _deny(req, fx.policy_data)
}

test_deny_purpose_without_codes if {
	"the purpose names no DUO research purpose code" in _deny(fx.request_with({"purpose": {"duo": []}}), fx.policy_data)
}

test_deny_purpose_that_is_a_modifier if {
	req := fx.request_with({"purpose": {"duo": ["DUO:0000021"]}})
	"DUO:0000021 is not a DUO research purpose code" in _deny(req, fx.policy_data)
}

test_deny_dataset_with_unknown_code if {
	_denied(_dataset(["DUO:0000042", "DUO:9999999"]), fx.policy_data, "DUO:9999999, which is not a DUO code this site knows")
}

test_deny_dataset_with_modifier_the_policy_cannot_check if {
	_denied(_dataset(["DUO:0000042", "DUO:0000019"]), fx.policy_data, "cannot check")
}

# --- modifiers -------------------------------------------------------------------------------------------

test_allow_not_for_profit_dataset_for_non_profit_requester if {
	count(_deny(_dataset(["DUO:0000042", "DUO:0000045"]), fx.policy_data)) == 0
}

test_deny_not_for_profit_dataset_for_company if {
	req := object.union(_dataset(["DUO:0000042", "DUO:0000045"]), {"requester": {"org": "org-p"}})
	_denied(req, fx.policy_data, "not-for-profit organisations only (DUO:0000045)")
}

test_allow_non_commercial_dataset_under_non_commercial_dsa if {
	count(_deny(_dataset(["DUO:0000042", "DUO:0000046"]), fx.policy_data)) == 0
}

test_deny_non_commercial_dataset_under_commercial_dsa if {
	_denied(_dataset(["DUO:0000042", "DUO:0000046"]), fx.dsa_with({"commercial_use": true}), "non-commercial use only (DUO:0000046)")
}

test_deny_npuncu_dataset_for_company if {
	req := object.union(_dataset(["DUO:0000042", "DUO:0000018"]), {"requester": {"org": "org-p"}})
	_denied(req, fx.policy_data, "DUO:0000018")
}

test_allow_npuncu_dataset_for_non_profit_non_commercial_use if {
	count(_deny(_dataset(["DUO:0000042", "DUO:0000018"]), fx.policy_data)) == 0
}

test_allow_ethics_dataset_with_approval_id_the_agreement_lists if {
	count(_deny(_dataset(["DUO:0000042", "DUO:0000021"]), fx.policy_data)) == 0
	count(_approval(_dataset(["DUO:0000042", "DUO:0000021"]), fx.policy_data)) == 0
}

# The researcher types the id: only an approval the agreement lists counts; any other waits for a steward.
test_ethics_approval_id_the_agreement_does_not_list_needs_approval if {
	req := _ethics_dataset_with_id("EC-2026-999")
	count(_deny(req, fx.policy_data)) == 0
	_approval(req, fx.policy_data) == {_unlisted_ethics_approval}
	not "DUO:0000021" in consent.satisfied with input as req with data.fedgate_data as fx.policy_data
}

test_ethics_approval_id_under_agreement_listing_none_needs_approval if {
	req := _ethics_dataset_with_id("EC-2026-1")
	d := json.patch(fx.policy_data, [{"op": "remove", "path": "/agreements/DSA-T-1/ethics_approvals"}])
	_approval(req, d) == {_unlisted_ethics_approval}
	_approval(req, fx.dsa_with({"ethics_approvals": []})) == {_unlisted_ethics_approval}
}

test_ethics_approval_listed_under_another_agreement_does_not_count if {
	other := object.union(fx.policy_data.agreements["DSA-T-1"], {"ethics_approvals": ["EC-2026-7"]})
	d := fx.data_with({"agreements": {"DSA-T-2": other}})
	_approval(_ethics_dataset_with_id("EC-2026-7"), d) == {_unlisted_ethics_approval}
}

test_ethics_approval_reasons_never_repeat_the_id if {
	req := _ethics_dataset_with_id("EC-SECRET-42")
	every reason in _approval(req, fx.policy_data) {
		not contains(reason, "EC-SECRET-42")
	}
}

test_deny_ethics_dataset_without_approval_id if {
	req := object.union(_dataset(["DUO:0000042", "DUO:0000021"]), {"purpose": {"ethics_approval_id": ""}})
	_denied(req, fx.policy_data, "requires ethics approval (DUO:0000021)")
}

test_allow_geographic_restriction_within_site_jurisdiction if {
	req := object.union(_dataset(["DUO:0000042", "DUO:0000022"]), {"requester": {"org": "org-a", "country": "DE"}, "destination": {"country": "DE"}})
	count(_deny(req, fx.policy_data)) == 0
}

# The answer reaches the organisation where it is registered, whatever country the token claims.
test_deny_geographic_restriction_outside_organisations_country if {
	req := object.union(_dataset(["DUO:0000042", "DUO:0000022"]), {"requester": {"org": "org-b", "country": "DE"}, "destination": {"country": "DE"}})
	"dataset ds-1 may be used only in DE (DUO:0000022)" in _deny(req, fx.policy_data)
}

test_deny_geographic_restriction_for_unknown_organisation if {
	req := object.union(_dataset(["DUO:0000042", "DUO:0000022"]), {"requester": {"org": "org-x", "country": "DE"}, "destination": {"country": "DE"}})
	"dataset ds-1 may be used only in DE (DUO:0000022)" in _deny(req, fx.policy_data)
}

test_deny_geographic_restriction_outside_site_jurisdiction if {
	"dataset ds-1 may be used only in DE (DUO:0000022)" in _deny(_dataset(["DUO:0000042", "DUO:0000022"]), fx.policy_data)
}

test_allow_geographic_restriction_with_named_area if {
	req := object.union(_dataset(["DUO:0000042", "DUO:0000022"]), {"dataset": {"geographic_area": ["DE", "FR"]}})
	count(_deny(req, fx.policy_data)) == 0
}

test_deny_moratorium_without_date if {
	_denied(_dataset(["DUO:0000042", "DUO:0000024"]), fx.policy_data, "publication moratorium (DUO:0000024) without a valid end date")
}

test_allow_open_moratorium_with_publication_obligation if {
	req := object.union(_dataset(["DUO:0000042", "DUO:0000024"]), {"dataset": {"moratorium_until": "2026-09-30"}})
	count(_deny(req, fx.policy_data)) == 0
	consent.publication_moratorium_until == "2026-09-30" with input as req with data.fedgate_data as fx.policy_data
}

test_no_publication_obligation_after_moratorium_ends if {
	req := object.union(_dataset(["DUO:0000042", "DUO:0000024"]), {"dataset": {"moratorium_until": "2026-01-31"}})
	not consent.publication_moratorium_until with input as req with data.fedgate_data as fx.policy_data
}

test_allow_time_limited_dataset_before_limit if {
	req := object.union(_dataset(["DUO:0000042", "DUO:0000025"]), {"dataset": {"use_until": "2026-05-01"}})
	count(_deny(req, fx.policy_data)) == 0
}

test_deny_time_limited_dataset_after_limit if {
	req := object.union(_dataset(["DUO:0000042", "DUO:0000025"]), {"dataset": {"use_until": "2026-04-30"}})
	"the time limit on use of dataset ds-1 (DUO:0000025) ended on 2026-04-30" in _deny(req, fx.policy_data)
}

test_deny_time_limited_dataset_without_date if {
	_denied(_dataset(["DUO:0000042", "DUO:0000025"]), fx.policy_data, "time limit on use (DUO:0000025) without a valid end date")
}

test_allow_collaboration_dataset_when_dsa_names_collaboration if {
	count(_deny(_dataset(["DUO:0000042", "DUO:0000020"]), fx.policy_data)) == 0
}

test_deny_collaboration_dataset_without_collaboration if {
	_denied(_dataset(["DUO:0000042", "DUO:0000020"]), fx.dsa_with({"collaboration": false}), "collaboration with the data holder (DUO:0000020)")
}

test_deny_return_of_results_dataset_without_return if {
	_denied(_dataset(["DUO:0000042", "DUO:0000029"]), fx.policy_data, "return of results (DUO:0000029)")
}

test_allow_return_of_results_dataset_with_return if {
	count(_deny(_dataset(["DUO:0000042", "DUO:0000029"]), fx.dsa_with({"return_of_results": true}))) == 0
}

test_deny_ancestry_research_on_npoa_dataset if {
	req := object.union(_dataset(["DUO:0000042", "DUO:0000044"]), {"purpose": {"duo": ["DUO:0000011"]}})
	_denied(req, fx.policy_data, "prohibits population origins or ancestry research (DUO:0000044)")
}

test_allow_medical_research_on_npoa_dataset if {
	count(_deny(_dataset(["DUO:0000042", "DUO:0000044"]), fx.policy_data)) == 0
}

# --- patient consent filter ------------------------------------------------------------------------------

test_patient_filter_requires_a_code_covering_the_purpose if {
	f := _filter(fx.request, fx.policy_data)
	f.require_any_of == [["DUO:0000004", "DUO:0000006", "DUO:0000042"]]
	f.consent_column == "consent_duo"
	f.withdrawn_column == "consent_withdrawn"
}

test_patient_filter_admits_met_modifiers_only if {
	f := _filter(fx.request, fx.policy_data)
	"DUO:0000045" in f.allowed_codes
	"DUO:0000021" in f.allowed_codes
	not "DUO:0000029" in f.allowed_codes
	not "DUO:0000024" in f.allowed_codes
	not "DUO:0000019" in f.allowed_codes
}

test_patient_filter_excludes_ethics_patients_without_approval if {
	f := _filter(fx.request_with({"purpose": {"ethics_approval_id": ""}}), fx.policy_data)
	not "DUO:0000021" in f.allowed_codes
}

# A dataset that does not require ethics approval is allowed at once: its patients who do need an approval
# the agreement lists.
test_patient_filter_excludes_ethics_patients_under_unlisted_approval if {
	f := _filter(fx.request_with({"purpose": {"ethics_approval_id": "EC-2026-999"}}), fx.policy_data)
	not "DUO:0000021" in f.allowed_codes
}

# A dataset that requires it waits for a steward: once approved, its patients take part.
test_patient_filter_admits_ethics_patients_pending_a_stewards_approval if {
	f := _filter(_ethics_dataset_with_id("EC-2026-999"), fx.policy_data)
	"DUO:0000021" in f.allowed_codes
}

test_patient_filter_excludes_not_for_profit_patients_for_company if {
	f := _filter(fx.request_with({"requester": {"org": "org-p"}}), fx.policy_data)
	not "DUO:0000045" in f.allowed_codes
	not "DUO:0000018" in f.allowed_codes
}

test_patient_filter_never_matches_disease_specific_consent if {
	req := fx.request_with({"purpose": {"duo": ["DUO:0000007"], "disease": "MONDO:0005148"}})
	f := _filter(req, fx.policy_data)
	f.require_any_of == [["DUO:0000004", "DUO:0000006", "DUO:0000042"]]
}

test_patient_filter_for_ancestry_research_excludes_npoa if {
	f := _filter(fx.request_with({"purpose": {"duo": ["DUO:0000011"]}}), fx.policy_data)
	f.require_any_of == [["DUO:0000004", "DUO:0000011", "DUO:0000042"]]
	not "DUO:0000044" in f.allowed_codes
}

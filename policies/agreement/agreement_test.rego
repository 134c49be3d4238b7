package fedgate.agreement_test

import rego.v1

import data.fedgate.agreement
import data.fedgate.fixtures_test as fx

_deny(req, d) := reasons if {
	reasons := agreement.deny with input as req with data.fedgate_data as d
}

_denied(req, d, fragment) if {
	some reason in _deny(req, d)
	contains(reason, fragment)
}

_approval(req, d) := reasons if {
	reasons := agreement.needs_approval with input as req with data.fedgate_data as d
}

_at(now) := fx.request_with({"now": now})

test_allow_when_every_term_is_met if {
	count(_deny(fx.request, fx.policy_data)) == 0
	count(_approval(fx.request, fx.policy_data)) == 0
}

test_deny_unknown_agreement if {
	"this site has no data-sharing agreement named DSA-NOPE" in _deny(fx.request_with({"dsa": "DSA-NOPE"}), fx.policy_data)
}

test_deny_suspended_agreement if {
	"DSA-T-1 is suspended" in _deny(fx.request, fx.dsa_with({"suspended": true}))
}

test_deny_when_dsa_expired if {
	"DSA-T-1 expired on 2026-06-30" in _deny(_at("2026-07-01T00:00:00Z"), fx.policy_data)
}

test_allow_on_last_day_of_dsa if {
	count(_deny(_at("2026-06-30T23:59:59Z"), fx.policy_data)) == 0
}

test_deny_before_dsa_is_in_force if {
	"DSA-T-1 is not in force before 2026-01-01" in _deny(_at("2025-12-31T23:59:59Z"), fx.policy_data)
}

test_expiry_respects_time_zone_offset if {
	# 01:00 on 1 July in Paris is still 30 June in UTC.
	count(_deny(_at("2026-07-01T01:00:00+02:00"), fx.policy_data)) == 0
}

test_deny_organisation_that_is_not_a_party if {
	req := fx.request_with({"requester": {"org": "org-x"}})
	"organisation org-x is not a party to DSA-T-1" in _deny(req, fx.policy_data)
}

test_deny_purpose_the_dsa_does_not_permit if {
	req := fx.request_with({"purpose": {"duo": ["DUO:0000011"]}})
	"DSA-T-1 does not permit the purpose DUO:0000011 (population origins or ancestry research only)" in _deny(req, fx.policy_data)
}

test_allow_narrower_purpose_than_dsa_permits if {
	req := fx.request_with({"purpose": {"duo": ["DUO:0000007"], "disease": "MONDO:0005148"}})
	count(_deny(req, fx.policy_data)) == 0
}

_limited_to_breast_cancer := "DSA-T-1 limits research to the diseases it lists (MONDO:0007254), and the purpose names none of them nor a disease below one"

test_deny_disease_outside_disease_specific_dsa if {
	d := fx.dsa_with({"purposes": ["DUO:0000007"], "diseases": ["MONDO:0007254"]})
	req := fx.request_with({"purpose": {"duo": ["DUO:0000007"], "disease": "MONDO:0005148"}})
	_deny(req, d) == {_limited_to_breast_cancer}
}

# The agreement's diseases limit the purpose's disease whatever the agreement's purposes.
test_deny_disease_outside_the_diseases_of_a_health_research_dsa if {
	d := fx.dsa_with({"diseases": ["MONDO:0007254"]})
	req := fx.request_with({"purpose": {"duo": ["DUO:0000007"], "disease": "MONDO:0005148"}})
	_deny(req, d) == {_limited_to_breast_cancer}
}

test_deny_purpose_naming_no_disease_under_a_dsa_that_lists_diseases if {
	d := fx.dsa_with({"diseases": ["MONDO:0007254"]})
	_deny(fx.request, d) == {_limited_to_breast_cancer}
}

test_allow_disease_below_the_diseases_of_a_health_research_dsa if {
	d := fx.dsa_with({"diseases": ["MONDO:0005015"]})
	req := fx.request_with({"purpose": {"duo": ["DUO:0000006"], "disease": "MONDO:0005148"}})
	count(_deny(req, d)) == 0
}

test_deny_disease_term_the_site_does_not_know_under_a_dsa_that_lists_diseases if {
	d := fx.dsa_with({"diseases": ["MONDO:0007254"]})
	req := fx.request_with({"purpose": {"duo": ["DUO:0000007"], "disease": "breast cancer, roughly"}})
	_deny(req, d) == {_limited_to_breast_cancer}
}

# The loader refuses such an agreement; should one reach the policies, it permits no disease.
test_deny_disease_specific_dsa_that_lists_no_diseases if {
	d := fx.dsa_with({"purposes": ["DUO:0000007"], "diseases": []})
	req := fx.request_with({"purpose": {"duo": ["DUO:0000007"], "disease": "MONDO:0005148"}})
	"DSA-T-1 limits research to the diseases it lists (none), and the purpose names none of them nor a disease below one" in _deny(req, d)
}

test_allow_disease_inside_disease_specific_dsa if {
	d := fx.dsa_with({"purposes": ["DUO:0000007"], "diseases": ["MONDO:0005015"]})
	req := fx.request_with({"purpose": {"duo": ["DUO:0000007"], "disease": "MONDO:0005148"}})
	count(_deny(req, d)) == 0
}

test_deny_dataset_outside_dsa if {
	"DSA-T-1 does not cover dataset ds-other" in _deny(fx.request_with({"dataset": {"id": "ds-other"}}), fx.policy_data)
}

# A dataset the agreement does not cover allows none of its columns.
test_deny_every_column_of_a_dataset_outside_dsa if {
	"DSA-T-1 does not allow the columns age, sex of dataset ds-other" in _deny(fx.request_with({"dataset": {"id": "ds-other"}}), fx.policy_data)
}

test_deny_selected_column_outside_dsa if {
	req := fx.request_with({"query": {"columns": ["sex", "name_hash"]}})
	"DSA-T-1 does not allow the columns name_hash of dataset ds-1" in _deny(req, fx.policy_data)
}

test_deny_filter_column_outside_dsa if {
	req := fx.request_with({"query": {"filters": {"op": "or", "args": [
		{"column": "age", "op": ">", "value": 3},
		{"op": "not", "arg": {"column": "zip", "op": "=", "value": "10115"}},
	]}}})
	"DSA-T-1 does not allow the columns zip of dataset ds-1" in _deny(req, fx.policy_data)
}

# Columns are found at any depth, only as "column" keys: not in values that look like one, nor in other keys.
test_filter_columns_are_column_keys_at_any_depth if {
	req := fx.request_with({"query": {"filters": {"op": "and", "args": [
		{"op": "or", "args": [{"op": "not", "arg": {"op": "and", "args": [{"column": "zip", "op": "=", "value": "1"}]}}]},
		{"column": "age", "op": "=", "value": "x\",\"column\":\"ssn"},
		{"column": "we\"ird", "op": "=", "value": 1},
		{"\"column": "hidden", "op": "=", "value": 1},
	]}}})
	"DSA-T-1 does not allow the columns we\"ird, zip of dataset ds-1" in _deny(req, fx.policy_data)
}

# Escaped backslashes and quotes in names and values, and text before them that is not ASCII, do not move
# where a column's name starts or ends.
test_filter_columns_with_escapes_keep_their_names if {
	req := fx.request_with({"query": {"filters": {"op": "and", "args": [
		{"column": "ä\\", "op": "=", "value": "\\\""},
		{"column": "\\\"x\"", "op": "=", "value": "ß"},
		{"column": "age", "op": "=", "value": "x\\\",\"column\":\"ssn"},
		{"x\"column": "hidden", "op": "=", "value": 1},
	]}}})
	"DSA-T-1 does not allow the columns \\\"x\", ä\\ of dataset ds-1" in _deny(req, fx.policy_data)
}

test_deny_filter_column_that_is_not_a_string if {
	req := fx.request_with({"query": {"filters": {"op": "and", "args": [{"column": 7, "op": "=", "value": 1}]}}})
	"the query's filters name a column by something other than a string" in _deny(req, fx.policy_data)
}

test_no_filters_touch_no_columns if {
	req := json.remove(fx.request, ["query/filters"])
	count(_deny(req, fx.policy_data)) == 0
}

test_deny_group_by_column_outside_dsa if {
	req := fx.request_with({"query": {"group_by": ["sex", "birth_date"]}})
	_denied(req, fx.policy_data, "does not allow the columns birth_date")
}

test_deny_analysis_kind_outside_dsa if {
	"DSA-T-1 does not allow crosstab queries" in _deny(fx.request_with({"query": {"kind": "crosstab"}}), fx.policy_data)
}

test_needs_approval_for_kind_the_dsa_names if {
	req := fx.request_with({"query": {"kind": "glm"}})
	count(_deny(req, fx.policy_data)) == 0
	"DSA-T-1 requires a steward's approval for glm queries" in _approval(req, fx.policy_data)
}

test_no_approval_for_other_kinds if {
	count(_approval(fx.request_with({"query": {"kind": "summary"}}), fx.policy_data)) == 0
}

_grant_required := fx.dsa_with({"visa": {"type": "ControlledAccessGrants", "value": "https://ega.example/DSA-T-1"}})

_grant_from_dac := fx.dsa_with({"visa": {
	"type": "ControlledAccessGrants", "value": "https://ega.example/DSA-T-1",
	"by": ["dac"], "source": "https://dac.ega.example",
}})

_grant(fields) := object.union({"type": "ControlledAccessGrants", "value": "https://ega.example/DSA-T-1", "source": "https://dac.ega.example/", "by": "dac"}, fields)

_with_visas(visas) := fx.request_with({"requester": {"visas": visas}})

test_deny_without_required_visa if {
	"DSA-T-1 requires a ControlledAccessGrants visa for https://ega.example/DSA-T-1 asserted by dac" in _deny(fx.request, _grant_required)
}

test_allow_with_required_visa if {
	count(_deny(_with_visas([_grant({})]), _grant_required)) == 0
}

# A researcher cannot grant themselves access: by "self" never counts for ControlledAccessGrants.
test_deny_self_asserted_controlled_access_grant if {
	_denied(_with_visas([_grant({"by": "self"})]), _grant_required, "requires a ControlledAccessGrants visa")
}

test_deny_self_asserted_controlled_access_grant_even_when_the_agreement_accepts_self if {
	d := fx.dsa_with({"visa": {"type": "ControlledAccessGrants", "value": "https://ega.example/DSA-T-1", "by": ["self", "dac"]}})
	_denied(_with_visas([_grant({"by": "self"})]), d, "requires a ControlledAccessGrants visa")
}

test_deny_visa_that_names_no_asserter if {
	visa := json.remove(_grant({}), ["by"])
	_denied(_with_visas([visa]), _grant_required, "requires a ControlledAccessGrants visa")
}

test_deny_visa_asserted_by_a_party_the_agreement_does_not_accept if {
	_denied(_with_visas([_grant({"by": "peer"})]), _grant_required, "requires a ControlledAccessGrants visa")
}

test_allow_visa_asserted_by_a_party_the_agreement_names if {
	d := fx.dsa_with({"visa": {"type": "AffiliationAndRole", "value": "faculty@uni.example", "by": ["so", "system"]}})
	req := _with_visas([_grant({"type": "AffiliationAndRole", "value": "faculty@uni.example", "by": "so"})])
	count(_deny(req, d)) == 0
}

test_allow_visa_from_the_named_source if {
	count(_deny(_with_visas([_grant({})]), _grant_from_dac)) == 0
}

test_deny_visa_from_another_source if {
	req := _with_visas([_grant({"source": "https://other-dac.example"})])
	"DSA-T-1 requires a ControlledAccessGrants visa for https://ega.example/DSA-T-1 asserted by dac at https://dac.ega.example" in _deny(req, _grant_from_dac)
}

test_deny_visa_without_source_when_the_agreement_names_one if {
	visa := json.remove(_grant({}), ["source"])
	_denied(_with_visas([visa]), _grant_from_dac, "requires a ControlledAccessGrants visa")
}

# --- thresholds ------------------------------------------------------------------------------------------

_obligation(name, d) := value if {
	value := agreement.thresholds[name] with input as fx.request with data.fedgate_data as d
}

test_dsa_tightens_min_cell_count if {
	_obligation("min_cell_count", fx.policy_data) == 20
}

test_dsa_cannot_loosen_min_cell_count if {
	_obligation("min_cell_count", fx.dsa_with({"thresholds": {"min_cell_count": 3}})) == 10
}

test_dsa_tightens_identical_query_limit if {
	_obligation("max_identical_queries", fx.policy_data) == 8
}

test_dsa_cannot_loosen_identical_query_limit if {
	_obligation("max_identical_queries", fx.dsa_with({"thresholds": {"max_identical_queries": 500}})) == 20
}

test_site_defaults_apply_without_dsa_thresholds if {
	d := fx.data_with({"agreements": {"DSA-T-1": {"thresholds": {}}}})
	d2 := json.patch(d, [{"op": "remove", "path": "/agreements/DSA-T-1/thresholds"}])
	_obligation("min_cell_count", d2) == 10
	_obligation("round_to", d2) == 1
}

test_no_differential_privacy_unless_required if {
	_obligation("dp", fx.policy_data) == null
}

test_dsa_requires_differential_privacy if {
	_obligation("dp", fx.dsa_with({"dp": {"epsilon": 0.5, "budget": 4}})) == {"epsilon": 0.5, "budget": 4}
}

test_site_dp_budget_caps_dsa_dp if {
	d := fx.data_with({
		"site": {"defaults": {"dp": {"epsilon": 1, "budget": 3}}},
		"agreements": {"DSA-T-1": {"dp": {"epsilon": 2, "budget": 10}}},
	})
	_obligation("dp", d) == {"epsilon": 1, "budget": 3}
}

test_allowed_columns_are_dsa_columns_the_dataset_has if {
	_obligation("allowed_columns", fx.policy_data) == ["age", "bmi", "outcome", "sex"]
}

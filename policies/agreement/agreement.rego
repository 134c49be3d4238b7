# Data-sharing agreement (DSA) terms: parties, purposes, datasets and columns, analysis kinds, validity,
# approval, and the disclosure thresholds a DSA may only tighten.
package fedgate.agreement

import rego.v1

# Functions come through the alias; rules by full path (see decision.rego for why).
import data.fedgate.lib

# Policy data is read through this one rule: see lib.rego on what a reference into data costs.
_data := data.fedgate_data

_dsa := _data.agreements[input.dsa]

_entry := _dsa.datasets[input.dataset.id]

deny contains msg if {
	not _dsa
	msg := sprintf("this site has no data-sharing agreement named %v", [input.dsa])
}

deny contains msg if {
	_dsa.suspended == true
	msg := sprintf("%s is suspended", [input.dsa])
}

# lib.before_day and lib.after_day written out: a function call costs the engine more than its two lines.
deny contains msg if {
	is_string(_dsa.not_before)
	data.fedgate.lib.today < _dsa.not_before
	msg := sprintf("%s is not in force before %s", [input.dsa, _dsa.not_before])
}

deny contains msg if {
	is_string(_dsa.not_after)
	data.fedgate.lib.today > _dsa.not_after
	msg := sprintf("%s expired on %s", [input.dsa, _dsa.not_after])
}

deny contains msg if {
	_dsa
	not input.requester.org in _dsa.parties
	msg := sprintf("organisation %v is not a party to %s", [input.requester.org, input.dsa])
}

# The agreement must permit every purpose code of the request.
# The agreement's purposes are permission codes (the loader checks), so apart from disease-specific research
# a table answers: for every agreement, the purpose codes one of its purposes covers (agreement_purposes,
# which the bundle loader derives once). Which diseases, the clause after this one decides.
deny contains msg if {
	_dsa
	_permitted_purposes[input.dsa] # a lookup is checked before it is assigned: see lib.rego
	permitted := _permitted_purposes[input.dsa]
	some p in data.fedgate.lib.purpose_codes
	not permitted[p]
	not _permits_disease_specific(p)
	msg := sprintf("%s does not permit the purpose %s", [input.dsa, lib.duo_label(p)])
}

_permits_disease_specific(p) if {
	"DUO:0000007" in _dsa.purposes
	"DUO:0000007" in data.fedgate.lib.duo_ancestors[p]
}

# An agreement that lists diseases limits every purpose to them, whatever its purposes: the purpose must name
# a disease at or below one of them. One for disease-specific research must list some (the loader checks);
# without them it permits no disease. The purpose's disease is the researcher's text: no reason repeats it.
deny contains msg if {
	_disease_limited
	not _disease_listed
	msg := sprintf(
		"%s limits research to the diseases it lists (%s), and the purpose names none of them nor a disease below one",
		[input.dsa, _listed_diseases],
	)
}

_disease_limited if count(object.get(_dsa, "diseases", [])) > 0

_disease_limited if "DUO:0000007" in _dsa.purposes

_disease_listed if {
	disease := object.get(input, ["purpose", "disease"], null)
	is_string(disease)
	data.fedgate.lib.disease_ancestors[disease] # a lookup is checked before it is assigned: see lib.rego
	some d in _dsa.diseases
	d in data.fedgate.lib.disease_ancestors[disease]
}

_listed_diseases := concat(", ", sort(_dsa.diseases)) if count(object.get(_dsa, "diseases", [])) > 0

else := "none"

_permitted_purposes := _data.derived.agreement_purposes if _data.derived.agreement_purposes

else := agreement_purposes

# agreement → {purpose code: true} for every DUO term one of the agreement's purposes covers.
agreement_purposes := {id: {p: true |
	some p, covering in data.fedgate.lib.covering_permissions
	some q in dsa.purposes
	q in covering
} |
	some id, dsa in _data.agreements
}

deny contains msg if {
	_dsa
	not _entry
	msg := sprintf("%s does not cover dataset %v", [input.dsa, input.dataset.id])
}

# The filter tree as JSON text, where every column it names is a `"column": "<name>"` pair at any depth.
# The compiled engine has no `walk`, and Rego has no recursion, so the pairs are found in the text. In the
# masked copy, each escaped backslash and then each escaped quote inside a string is written as two other
# characters, so every quote left in it delimits a string and positions are those of the JSON text: there,
# `"column":` occurs exactly where an object has the key "column" (in compact JSON a string is followed by
# `:` only when it is a key), and json.unmarshal turns the string literal that follows back into the
# column's name. (No regular expression: regorus compiles one on every call, which costs more than this.)
_filters_json := json.marshal(object.get(input, ["query", "filters"], null))

_filters_masked := replace(replace(_filters_json, `\\`, "__"), `\"`, "__")

# Where the string value of each "column" key starts (at its opening quote) in the filters' JSON text.
_filter_column_starts := [start | some i in indexof_n(_filters_masked, `"column":"`); start := i + 9]

# Every column the query touches: selected, grouped by, or named anywhere in the filter tree (the value of
# any "column" key at any depth) must be one the agreement allows for the dataset. Computed in the clause
# rather than in rules of their own, each column looked up in the agreement's list where it is found: that
# costs the engine less than building the sets and subtracting one from the other.
deny contains msg if {
	forbidden := ({c | some c in object.get(input, ["query", "columns"], []); not c in _allowed_columns} | {c | some c in object.get(input, ["query", "group_by"], []); not c in _allowed_columns}) | {c |
		some start in _filter_column_starts
		c := json.unmarshal(substring(_filters_json, start, indexof(substring(_filters_masked, start + 1, -1), `"`) + 2))
		not c in _allowed_columns
	}
	count(forbidden) > 0
	msg := sprintf("%s does not allow the columns %s of dataset %s", [input.dsa, concat(", ", sort(forbidden)), input.dataset.id])
}

# The columns the agreement allows for the dataset; none when it does not cover the dataset. (Never an
# undefined operand under `not`: OPA fails such an expression where regorus makes it true.)
_allowed_columns := _entry.columns if _entry.columns

else := []

# A column named by anything but a string cannot be checked against the agreement.
deny contains "the query's filters name a column by something other than a string" if {
	count(indexof_n(_filters_masked, `"column":`)) != count(_filter_column_starts)
}

deny contains msg if {
	_dsa
	not input.query.kind in _dsa.query_kinds
	msg := sprintf("%s does not allow %v queries", [input.dsa, input.query.kind])
}

# A required visa is held when one of the requester's visas has its type and value, was asserted by one of
# the parties the agreement accepts (`by`; a data access committee unless it names others, and never the
# researcher for a ControlledAccessGrants visa) and, when the agreement names a `source`, by the
# organisation at that URL (without a trailing slash, as issuers compare). The gateway passes only visas
# it verified, with the `source` and `by` of their ga4gh_visa_v1 object (gateway.auth.visas).
_has_visa(required) if {
	some visa in input.requester.visas
	visa.type == required.type
	visa.value == required.value
	by := object.get(visa, "by", null)
	by in _accepted_by(required)
	not _self_granted(visa.type, by)
	_from_source(required, visa)
}

_accepted_by(required) := object.get(required, "by", ["dac"])

_self_granted(type, by) if {
	type == "ControlledAccessGrants"
	by == "self"
}

_from_source(required, _) if object.get(required, "source", null) == null

_from_source(required, visa) if {
	wanted := object.get(required, "source", null)
	is_string(wanted)
	source := object.get(visa, "source", null)
	is_string(source)
	trim_right(source, "/") == trim_right(wanted, "/")
}

_visa_source(required) := sprintf(" at %s", [source]) if {
	source := object.get(required, "source", null)
	is_string(source)
} else := ""

deny contains msg if {
	_dsa.visa
	required := _dsa.visa
	not _has_visa(required)
	msg := sprintf(
		"%s requires a %s visa for %s asserted by %s%s",
		[input.dsa, required.type, required.value, concat(" or ", _accepted_by(required)), _visa_source(required)],
	)
}

needs_approval contains msg if {
	input.query.kind in object.get(_dsa, "approval_kinds", [])
	msg := sprintf("%s requires a steward's approval for %s queries", [input.dsa, input.query.kind])
}

allow contains msg if {
	_entry
	msg := sprintf("%s lets %s run %v queries on dataset %s", [input.dsa, input.requester.org, input.query.kind, input.dataset.id])
}

# --- thresholds: the tighter of the site default and the agreement ---------------------------------------

thresholds := object.union(_agreement_limits, {"allowed_columns": sort({c | some c in _entry.columns; c in requested})}) if {
	requested := object.get(input.dataset, "columns", _entry.columns)
}

# The agreement's limits depend on the data alone, so the bundle loader computes them once for every
# agreement (agreement_limits, stored as data.fedgate_data.derived.agreement_limits) and a decision reads
# one entry instead of evaluating a dozen built-ins. Data without that table, such as the test fixtures,
# gets them computed here by the same function.
_agreement_limits := _data.derived.agreement_limits[input.dsa] if _data.derived.agreement_limits

else := limits(_dsa)

agreement_limits := {id: limits(dsa) | some id, dsa in _data.agreements}

limits(dsa) := {
	"min_cell_count": max({_data.site.defaults.min_cell_count, object.get(terms, "min_cell_count", 0)}),
	"round_to": max({_data.site.defaults.round_to, object.get(terms, "round_to", 1)}),
	"keep_zero_cells": object.get(terms, "keep_zero_cells", false),
	"max_identical_queries": min({_data.site.defaults.max_identical_queries, object.get(terms, "max_identical_queries", _data.site.defaults.max_identical_queries)}),
	"glm_min_rows": max({_data.site.defaults.glm_min_rows, object.get(terms, "glm_min_rows", 0)}),
	"glm_max_parameter_ratio": min({_data.site.defaults.glm_max_parameter_ratio, object.get(terms, "glm_max_parameter_ratio", 1)}),
	"dp": _dp(object.get(_data.site.defaults, "dp", null), object.get(dsa, "dp", null)),
} if {
	terms := object.get(dsa, "thresholds", {})
}

# Differential privacy is required when the site or the agreement asks for it, with the smaller epsilon
# and budget of the two.
_dp(site_dp, dsa_dp) := null if {
	site_dp == null
	dsa_dp == null
}

else := dsa_dp if site_dp == null

else := site_dp if dsa_dp == null

else := {"epsilon": min({site_dp.epsilon, dsa_dp.epsilon}), "budget": min({site_dp.budget, dsa_dp.budget})}

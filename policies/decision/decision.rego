# The one decision per request: composes consent, transfer and agreement rules into
# {decision, reasons, obligations, bundle_digest}.
package fedgate.decision

import rego.v1

import data.fedgate.agreement
import data.fedgate.consent
import data.fedgate.lib
import data.fedgate.transfer

# --- the request must be well formed before any rule can be trusted --------------------------------------

_required_strings := [
	["requester", "sub"],
	["requester", "org"],
	["requester", "country"],
	["dsa"],
	["dataset", "id"],
	["query", "kind"],
	["destination", "country"],
	["now"],
]

_required_arrays := [
	["requester", "roles"],
	["purpose", "duo"],
	["dataset", "duo"],
]

input_problems contains msg if {
	some path in _required_strings
	value := object.get(input, path, null)
	not _non_empty_string(value)
	msg := sprintf("the request has no input.%s", [concat(".", path)])
}

input_problems contains msg if {
	some path in _required_arrays
	not is_array(object.get(input, path, null))
	msg := sprintf("the request has no input.%s list", [concat(".", path)])
}

input_problems contains "input.now is not an RFC 3339 timestamp" if {
	_non_empty_string(input.now)
	not lib.now_ns
}

_non_empty_string(v) if {
	is_string(v)
	v != ""
}

# --- site-wide rules -------------------------------------------------------------------------------------

site_deny contains msg if {
	is_array(input.requester.roles)
	not "researcher" in input.requester.roles
	msg := "the requester does not hold the researcher role"
}

site_deny contains msg if {
	is_string(input.query.kind)
	not input.query.kind in lib.site.query_kinds
	msg := sprintf("this site does not offer %s queries", [input.query.kind])
}

site_approval contains msg if {
	input.query.kind in object.get(lib.site, "approval_kinds", [])
	msg := sprintf("this site requires a steward's approval for %s queries", [input.query.kind])
}

# --- composition -----------------------------------------------------------------------------------------

# A malformed request is denied on its shape alone: clauses that read missing fields would only add noise.
deny_reasons := input_problems if count(input_problems) > 0

else := ((site_deny | agreement.deny) | consent.deny) | transfer.deny

approval_reasons := site_approval | agreement.needs_approval

allow_reasons := (agreement.allow | consent.allow) | transfer.allow

decision := "deny" if count(deny_reasons) > 0

else := "needs_approval" if count(approval_reasons) > 0

else := "allow"

reasons := sort(deny_reasons) if decision == "deny"

else := sort(approval_reasons) if decision == "needs_approval"

else := sort(allow_reasons)

_moratorium := m if {
	m := consent.publication_moratorium_until
} else := null

obligations := null if decision == "deny"

else := {
	"min_cell_count": agreement.min_cell_count,
	"round_to": agreement.round_to,
	"keep_zero_cells": agreement.keep_zero_cells,
	"allowed_columns": agreement.allowed_columns,
	"consent_filter": consent.consent_filter,
	"dp": agreement.dp,
	"max_identical_queries": agreement.max_identical_queries,
	"glm_min_rows": agreement.glm_min_rows,
	"glm_max_parameter_ratio": agreement.glm_max_parameter_ratio,
	"publication_moratorium_until": _moratorium,
}

result := {
	"decision": decision,
	"reasons": reasons,
	"obligations": obligations,
	"bundle_digest": object.get(data.fedgate_data, ["meta", "bundle_digest"], ""),
}

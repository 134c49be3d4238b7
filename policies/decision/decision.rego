# The one decision per request: composes consent, transfer and agreement rules into
# {decision, reasons, obligations, bundle_digest}.
package fedgate.decision

import rego.v1

# Policy data is read through this one rule: see lib.rego on what a reference into data costs.
_data := data.fedgate_data

# Rules of other packages are read by full path (data.fedgate.x.rule), not through `import data.fedgate.x`:
# the embedded engine evaluates a whole package when one of its rules is read through the package alias.
# lib.rego has the other notes on speed.

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

# Checked field by field only when the quick check fails: a well-formed request should not pay for the
# explanation of a malformed one.
_well_formed if {
	# Inline checks rather than calls to _non_empty_string: each function call costs the engine more than
	# the two expressions it stands for, and this rule runs on every request.
	is_string(input.requester.sub)
	input.requester.sub != ""
	is_string(input.requester.org)
	input.requester.org != ""
	is_string(input.requester.country)
	input.requester.country != ""
	is_string(input.dsa)
	input.dsa != ""
	is_string(input.dataset.id)
	input.dataset.id != ""
	is_string(input.query.kind)
	input.query.kind != ""
	is_string(input.destination.country)
	input.destination.country != ""
	data.fedgate.lib.today # defined only for an RFC 3339 input.now, and needed by the clauses anyway
	is_array(input.requester.roles)
	is_array(input.purpose.duo)
	is_array(input.dataset.duo)
}

input_problems contains msg if {
	not _well_formed
	some path in _required_strings
	value := object.get(input, path, null)
	not _non_empty_string(value)
	msg := sprintf("the request has no input.%s", [concat(".", path)])
}

input_problems contains msg if {
	not _well_formed
	some path in _required_arrays
	not is_array(object.get(input, path, null))
	msg := sprintf("the request has no input.%s list", [concat(".", path)])
}

input_problems contains "input.now is not an RFC 3339 timestamp" if {
	not _well_formed
	_non_empty_string(input.now)
	not data.fedgate.lib.today
}

_non_empty_string(v) if {
	is_string(v)
	v != ""
}

# --- composition -----------------------------------------------------------------------------------------

# A malformed request is denied on its shape alone: clauses that read missing fields would only add noise.
deny_reasons := input_problems if not _well_formed

else := ((_site_deny | data.fedgate.agreement.deny) | data.fedgate.consent.deny) | data.fedgate.transfer.deny

# The site's own clauses, beside the agreement's, consent's and transfer's.
_site_deny contains "the requester does not hold the researcher role" if {
	is_array(input.requester.roles)
	not "researcher" in input.requester.roles
}

_site_deny contains msg if {
	is_string(input.query.kind)
	not input.query.kind in _data.site.query_kinds
	msg := sprintf("this site does not offer %s queries", [input.query.kind])
}

_site_approvals contains msg if {
	input.query.kind in object.get(_data.site, "approval_kinds", [])
	msg := sprintf("this site requires a steward's approval for %s queries", [input.query.kind])
}

# One rule with an else-chain rather than a rule for each field of the answer: each rule costs the embedded
# engine a few µs, and an allowed request never builds the deny or approval answer.
# Written so that anything undefined ends in a deny: allow needs a defined, empty set of deny reasons.
# (`not count(deny_reasons) == 0` holds when deny_reasons is undefined too; the deny answer is then
# undefined, and the gateway turns an undefined answer into a failed, denied decision.)
result := {
	"decision": "deny",
	"reasons": sort(deny_reasons),
	"obligations": null,
	"bundle_digest": object.get(_data, ["meta", "bundle_digest"], ""),
} if {
	not count(deny_reasons) == 0
}

else := {
	"decision": "needs_approval",
	"reasons": sort(approvals),
	"obligations": _obligations,
	"bundle_digest": object.get(_data, ["meta", "bundle_digest"], ""),
} if {
	approvals := (_site_approvals | data.fedgate.agreement.needs_approval) | data.fedgate.consent.needs_approval
	count(approvals) > 0
}

else := {
	"decision": "allow",
	"reasons": sort((data.fedgate.agreement.allow | data.fedgate.consent.allow) | data.fedgate.transfer.allow),
	"obligations": _obligations,
	"bundle_digest": object.get(_data, ["meta", "bundle_digest"], ""),
}

_obligations := object.union(data.fedgate.agreement.thresholds, {
	"consent_filter": data.fedgate.consent.consent_filter,
	"publication_moratorium_until": _moratorium,
})

_moratorium := data.fedgate.consent.publication_moratorium_until if data.fedgate.consent.publication_moratorium_until

else := null

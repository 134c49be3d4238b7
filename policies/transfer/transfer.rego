# Cross-border transfer: the site's jurisdiction against the requester's and the destination's (EEA,
# adequacy decisions, standard contractual clauses named in the agreement, blocked countries, export control).
package fedgate.transfer

import rego.v1

# Functions come through the alias; rules by full path (see decision.rego for why).
import data.fedgate.lib

# Policy data is read through this one rule: see lib.rego on what a reference into data costs.
_data := data.fedgate_data

_regime(c) := "EEA" if c in _data.transfer.eea

else := c

# Who receives the answer: the requester's country (the token's claim), the declared destination and the
# country the requester's organisation is registered in are all checked. The organisation's country is
# named only when it is neither of the other two, whose clauses already cover it.
_recipients := {
	"requester": input.requester.country,
	"destination": input.destination.country,
	"requester's organisation": c,
} if {
	data.fedgate.lib.organisation_country # a lookup is checked before it is assigned: see lib.rego
	c := data.fedgate.lib.organisation_country
	c != input.requester.country
	c != input.destination.country
}

else := {"requester": input.requester.country, "destination": input.destination.country}

# An organisation this site does not know has no registered country to check a transfer against.
deny contains msg if {
	not data.fedgate.lib.organisation_country
	msg := sprintf("organisation %v is not registered with this site, so the country the answer would reach cannot be checked", [input.requester.org])
}

# The first legal basis that applies to each recipient, in the order a steward would cite them: the bases
# that rest on the site's data alone (its own jurisdiction, the EEA, an adequacy decision) come from a table
# of countries, then the standard contractual clauses the agreement names for the country. Both tables
# depend on the data alone, so the bundle loader computes them once (data.fedgate_data.derived); without
# them the rules compute them. (Each lookup is checked before its value is used: see lib.rego.)
_bases[role] := _site_bases[c] if {
	some role, c in _recipients
	_site_bases[c]
}

_bases[role] := sprintf("standard contractual clauses %s in %s", [_agreement_sccs[input.dsa][c], input.dsa]) if {
	some role, c in _recipients
	not _site_bases[c]
	_agreement_sccs[input.dsa][c]
}

_site_bases := _data.derived.transfer_site_bases if _data.derived.transfer_site_bases

else := transfer_site_bases

_agreement_sccs := _data.derived.transfer_agreement_sccs if _data.derived.transfer_agreement_sccs

else := transfer_agreement_sccs

# country → basis, for every country the site may send to without an agreement's clauses.
transfer_site_bases := {c: b | some c in _site_countries; b := _site_basis(c)}

_site_countries := ({_data.site.jurisdiction} | {c | some c in _data.transfer.eea}) | {c | some c, _ in object.get(_data.transfer.adequacy, _regime(_data.site.jurisdiction), {})}

_site_basis(c) := "the site's own jurisdiction" if c == _data.site.jurisdiction

else := "the EEA, which also holds the site" if {
	c in _data.transfer.eea
	_data.site.jurisdiction in _data.transfer.eea
}

else := sprintf("an adequacy decision (%s)", [decision]) if {
	_data.transfer.adequacy[_regime(_data.site.jurisdiction)][c]
	decision := _data.transfer.adequacy[_regime(_data.site.jurisdiction)][c]
}

# agreement → country → the first standard contractual clauses the agreement names for that country.
transfer_agreement_sccs := {id: {c: ids[0] |
	some s in clauses
	some c in s.countries
	ids := [t.id | some t in clauses; c in t.countries]
} |
	some id, dsa in _data.agreements
	clauses := object.get(dsa, "standard_contractual_clauses", [])
}

deny contains msg if {
	some role, c in _recipients
	c in _data.transfer.blocked
	msg := sprintf("transfers to %s (the %s's country) are blocked by this site", [c, role])
}

deny contains msg if {
	some role, c in _recipients
	is_string(c)
	not c in _data.transfer.blocked
	not _bases[role]
	msg := sprintf(
		"no legal basis to transfer data from %s to %s (the %s's country): no adequacy decision, and %s names no standard contractual clauses for %s",
		[_data.site.jurisdiction, c, role, input.dsa, c],
	)
}

allow contains msg if {
	some role, b in _bases
	c := _recipients[role]
	msg := sprintf("transfer to %s (the %s's country) rests on %s", [c, role, b])
}

# --- export control --------------------------------------------------------------------------------------

_class := _data.export_control.classified_datasets[input.dataset.id]

_candidates := {l | some l in object.get(_data.agreements, [input.dsa, "export_licences"], []); _data.export_control.licences[l].class == _class}

# [licence, what keeps it from covering this request] for every candidate licence.
_licence_problems contains [l, msg] if {
	some l in _candidates
	lib.before_day(_data.export_control.licences[l].not_before)
	msg := sprintf("export licence %s is not valid before %s", [l, _data.export_control.licences[l].not_before])
}

_licence_problems contains [l, msg] if {
	some l in _candidates
	lib.after_day(_data.export_control.licences[l].not_after)
	msg := sprintf("export licence %s expired on %s", [l, _data.export_control.licences[l].not_after])
}

_licence_problems contains [l, msg] if {
	some l in _candidates
	some role, c in _recipients
	not c in _data.export_control.licences[l].destinations
	msg := sprintf("export licence %s does not permit %s (the %s's country) as a destination", [l, c, role])
}

_licence_problems contains [l, msg] if {
	some l in _candidates
	_data.export_control.licences[l].re_export == false
	input.destination.country != input.requester.country
	msg := sprintf(
		"export licence %s forbids re-export from %s to %s",
		[l, input.requester.country, input.destination.country],
	)
}

# Without re-export, the answer must stay in one country: the requester's organisation's too.
_licence_problems contains [l, msg] if {
	some l in _candidates
	_data.export_control.licences[l].re_export == false
	_recipients["requester's organisation"] # a lookup is checked before it is assigned: see lib.rego
	c := _recipients["requester's organisation"]
	msg := sprintf(
		"export licence %s forbids re-export from %s to %s (the requester's organisation's country)",
		[l, input.requester.country, c],
	)
}

_licensed if {
	some l in _candidates
	not l in {p[0] | some p in _licence_problems}
}

deny contains msg if {
	_class
	count(_candidates) == 0
	msg := sprintf("dataset %s is export-controlled (class %s) and %s names no export licence for that class", [input.dataset.id, _class, input.dsa])
}

deny contains msg if {
	_class
	not _licensed
	some [_, msg] in _licence_problems
}

allow contains msg if {
	_class # first: most datasets are not export-controlled, and then nothing else here needs evaluating
	_licensed
	msg := sprintf("dataset %s is export-controlled (class %s) and covered by a valid export licence", [input.dataset.id, _class])
}

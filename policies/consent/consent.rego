# Consent scope (GA4GH DUO): the dataset's consent must cover the purpose; patients whose consent does not are
# filtered out of the query by the consent_filter obligation.
package fedgate.consent

import rego.v1

import data.fedgate.lib
import input.dataset

# Policy data is read through this one rule: see lib.rego on what a reference into data costs.
_data := data.fedgate_data

# DUO modifiers checked against the request from this table, and what each demands. IRB, GS, MOR and TS
# have their own rules (a steward may verify an approval; the others carry an area or a date). Any other
# modifier denies (dataset) or excludes the patient (patient consent): a restriction the policy cannot check
# must not be ignored.
_demands := {
	"DUO:0000045": "is for not-for-profit organisations only (DUO:0000045) and the requester's organisation is not registered as one",
	"DUO:0000046": "is for non-commercial use only (DUO:0000046) and the agreement does not exclude commercial use",
	"DUO:0000018": "is for not-for-profit, non-commercial use only (DUO:0000018)",
	"DUO:0000020": "requires collaboration with the data holder (DUO:0000020) and the agreement names none",
	"DUO:0000029": "requires return of results (DUO:0000029) and the agreement does not provide for it",
	"DUO:0000044": "prohibits population origins or ancestry research (DUO:0000044)",
}

# Comprehensions are written out rather than through lib.strings_of: see lib.rego on the cost of calls.
dataset_codes := {c | some c in dataset.duo; is_string(c)} if is_array(dataset.duo)

else := set()

_geographic_area := {c | some c in dataset.geographic_area; is_string(c)} if is_array(dataset.geographic_area)

else := {_data.site.jurisdiction}

# Modifiers the request satisfies; the same set decides dataset consent and patient consent. One clause per
# modifier: each tests only what its modifier needs.
satisfied contains "DUO:0000045" if _non_profit

satisfied contains "DUO:0000046" if _non_commercial

satisfied contains "DUO:0000018" if {
	_non_profit
	_non_commercial
}

# Ethics approval counts only when the agreement lists the purpose's approval id: the researcher types the
# id, the steward records the approvals verified for the agreement (`ethics_approvals`).
satisfied contains "DUO:0000021" if {
	_ethics_approval_id
	_ethics_approval_id in object.get(_data.agreements, [input.dsa, "ethics_approvals"], [])
}

# The geographic area must hold every country the answer reaches, the organisation's registered one too.
satisfied contains "DUO:0000022" if {
	data.fedgate.lib.organisation_country # undefined for an unknown organisation: then nothing satisfies
	count({input.requester.country, input.destination.country, data.fedgate.lib.organisation_country} - _geographic_area) == 0
}

satisfied contains "DUO:0000020" if object.get(_data.agreements, [input.dsa, "collaboration"], false) == true

satisfied contains "DUO:0000029" if object.get(_data.agreements, [input.dsa, "return_of_results"], false) == true

satisfied contains "DUO:0000044" if {
	count({p | some p in data.fedgate.lib.purpose_codes; "DUO:0000011" in data.fedgate.lib.covering_permissions[p]}) == 0
}

_ethics_approval_id := approval_id if {
	approval_id := object.get(input, ["purpose", "ethics_approval_id"], null)
	is_string(approval_id)
	approval_id != ""
}

_non_profit if object.get(_data.organisations, [input.requester.org, "non_profit"], false) == true

_non_commercial if object.get(_data.agreements, [input.dsa, "commercial_use"], true) == false

# --- the purpose -----------------------------------------------------------------------------------------

deny contains "the purpose names no DUO research purpose code" if count(data.fedgate.lib.purpose_codes) == 0

deny contains msg if {
	some p in data.fedgate.lib.purpose_codes
	not _data.duo.terms[p].kind == "permission"
	msg := sprintf("%s is not a DUO research purpose code", [p])
}

deny contains msg if {
	"DUO:0000007" in data.fedgate.lib.purpose_codes
	# object.get, not input.purpose.disease: OPA makes a negation over a missing field undefined (no deny),
	# where the embedded engine makes it true; a default gives both engines the same, closed answer.
	not is_string(object.get(input, ["purpose", "disease"], null))
	msg := "disease-specific research (DUO:0000007) needs a disease term in the purpose"
}

# --- dataset consent -------------------------------------------------------------------------------------

_dataset_diseases := {d | some d in dataset.diseases; is_string(d)} if is_array(dataset.diseases)

else := set()

# Purpose codes the dataset's consent covers: a permission code of the dataset at or above the purpose in DUO
# (a table lookup), or disease-specific consent for a disease at or below one of the dataset's disease terms.
_covered contains p if {
	some p in data.fedgate.lib.purpose_codes
	some c in dataset_codes
	c in data.fedgate.lib.covering_permissions[p]
}

_covered contains p if {
	"DUO:0000007" in dataset_codes
	some p in data.fedgate.lib.purpose_codes
	lib.permits("DUO:0000007", _dataset_diseases, p, object.get(input.purpose, "disease", null))
}

_uncovered := {p | some p in data.fedgate.lib.purpose_codes; _data.duo.terms[p].kind == "permission"; not p in _covered}

deny contains msg if {
	some p in _uncovered
	msg := sprintf("the consent of dataset %s does not cover the purpose %s", [dataset.id, lib.duo_label(p)])
}

deny contains msg if {
	some c in dataset_codes
	not _data.duo.terms[c]
	msg := sprintf("dataset %s carries %s, which is not a DUO code this site knows", [dataset.id, c])
}

deny contains msg if {
	some c in dataset_codes
	_data.duo.terms[c].kind == "modifier"
	not _demands[c]
	not c in {"DUO:0000021", "DUO:0000022", "DUO:0000024", "DUO:0000025"}
	msg := sprintf("dataset %s carries the DUO modifier %s, which this site's policy cannot check", [dataset.id, lib.duo_label(c)])
}

deny contains msg if {
	some c in dataset_codes
	_demands[c] # a lookup is checked before it is assigned: see lib.rego
	demand := _demands[c]
	not c in satisfied
	msg := sprintf("dataset %s %s", [dataset.id, demand])
}

# Ethics approval (DUO:0000021): no approval id denies; an id the agreement does not list (or an agreement
# that lists none) waits for a steward, who sees the id in the queued request and verifies it. The id is the
# researcher's text, so no reason repeats it.
deny contains msg if {
	"DUO:0000021" in dataset_codes
	not _ethics_approval_id
	msg := sprintf("dataset %s requires ethics approval (DUO:0000021) and the purpose carries no approval id", [dataset.id])
}

needs_approval contains msg if {
	"DUO:0000021" in dataset_codes
	_ethics_approval_unverified
	msg := sprintf(
		"dataset %s requires ethics approval (DUO:0000021) and %s does not list the purpose's approval id: a steward must verify it",
		[dataset.id, input.dsa],
	)
}

_ethics_approval_unverified if {
	_ethics_approval_id
	not "DUO:0000021" in satisfied
}

deny contains msg if {
	"DUO:0000022" in dataset_codes
	not "DUO:0000022" in satisfied
	msg := sprintf("dataset %s may be used only in %s (DUO:0000022)", [dataset.id, concat(", ", sort(_geographic_area))])
}

deny contains msg if {
	"DUO:0000024" in dataset_codes
	not lib.valid_date(object.get(input, ["dataset", "moratorium_until"], null))
	msg := sprintf("dataset %s carries a publication moratorium (DUO:0000024) without a valid end date", [dataset.id])
}

deny contains msg if {
	"DUO:0000025" in dataset_codes
	not lib.valid_date(object.get(input, ["dataset", "use_until"], null))
	msg := sprintf("dataset %s carries a time limit on use (DUO:0000025) without a valid end date", [dataset.id])
}

deny contains msg if {
	"DUO:0000025" in dataset_codes
	lib.after_day(dataset.use_until)
	msg := sprintf("the time limit on use of dataset %s (DUO:0000025) ended on %s", [dataset.id, dataset.use_until])
}

allow contains msg if {
	count(data.fedgate.lib.purpose_codes) > 0
	count(_uncovered) == 0
	msg := sprintf("the consent of dataset %s covers the purpose %s", [dataset.id, concat(", ", sort(data.fedgate.lib.purpose_codes))])
}

# An open moratorium does not stop the query; the answer carries the date before which it must not be published.
publication_moratorium_until := dataset.moratorium_until if {
	"DUO:0000024" in dataset_codes
	lib.before_day(dataset.moratorium_until)
}

# --- patient consent -------------------------------------------------------------------------------------

_permission_codes := object.keys(_data.derived.permission_codes) if _data.derived.permission_codes

else := {c | some c, term in _data.duo.terms; term.kind == "permission"}

# Per-patient disease terms are not stored, so a patient's disease-specific consent never matches a purpose:
# a patient needs one of the purpose's covering permissions other than DUO:0000007 (lib.covering_permissions).
# A patient stays in the query when not withdrawn, holding one code of every group in require_any_of, and
# holding no code outside allowed_codes (unknown and unmet restrictions exclude). Patients who require ethics
# approval take part under an approval id a steward verifies only when the dataset requires it too, which
# makes the decision needs_approval: the filter takes effect once the steward has approved.
consent_filter := {
	"withdrawn_column": object.get(_data.site, ["patient_consent", "withdrawn_column"], "consent_withdrawn"),
	"consent_column": object.get(_data.site, ["patient_consent", "consent_column"], "consent_duo"),
	"separator": " ",
	"require_any_of": [object.get(data.fedgate.lib.covering_permissions, p, []) | some p in sort(data.fedgate.lib.purpose_codes)],
	"allowed_codes": sort((_permission_codes | satisfied) | _pending_codes),
}

_pending_codes := {"DUO:0000021"} if {
	"DUO:0000021" in dataset_codes
	_ethics_approval_unverified
}

else := set()

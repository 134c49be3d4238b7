# Consent scope (GA4GH DUO): the dataset's consent must cover the purpose; patients whose consent does not are
# filtered out of the query by the consent_filter obligation.
package fedgate.consent

import rego.v1

import data.fedgate.lib

npu := "DUO:0000045"

ncu := "DUO:0000046"

npuncu := "DUO:0000018"

irb := "DUO:0000021"

gs := "DUO:0000022"

mor := "DUO:0000024"

ts := "DUO:0000025"

col := "DUO:0000020"

rtn := "DUO:0000029"

npoa := "DUO:0000044"

poa := "DUO:0000011"

# Modifiers this policy knows how to check against a request; any other modifier denies (dataset) or
# excludes the patient (patient consent), because an unchecked restriction must not be ignored.
handled_modifiers := {npu, ncu, npuncu, irb, gs, mor, ts, col, rtn, npoa}

_dataset_id := input.dataset.id

dataset_codes := lib.strings_of(object.get(input, ["dataset", "duo"], []))

_dataset_diseases := lib.strings_of(object.get(input, ["dataset", "diseases"], []))

purpose_codes := lib.strings_of(object.get(input, ["purpose", "duo"], []))

_disease := object.get(input, ["purpose", "disease"], null)

_countries := {c | some c in [input.requester.country, input.destination.country]}

_geographic_area := lib.strings_of(input.dataset.geographic_area) if is_array(input.dataset.geographic_area)

else := {lib.site.jurisdiction}

_ancestry_research if {
	some p in purpose_codes
	lib.duo_covers(poa, p)
}

# Modifiers the request satisfies; the same set decides dataset consent and patient consent.
_non_profit if lib.organisation.non_profit == true

_non_commercial if lib.dsa.commercial_use == false

satisfied contains npu if _non_profit

satisfied contains ncu if _non_commercial

satisfied contains npuncu if {
	_non_profit
	_non_commercial
}

satisfied contains irb if {
	is_string(input.purpose.ethics_approval_id)
	input.purpose.ethics_approval_id != ""
}

satisfied contains gs if {
	count(_countries) > 0
	every c in _countries {
		c in _geographic_area
	}
}

satisfied contains col if lib.dsa.collaboration == true

satisfied contains rtn if lib.dsa.return_of_results == true

satisfied contains npoa if not _ancestry_research

# The dated modifiers can be checked only for a dataset, which carries the dates.
_dataset_satisfied := satisfied | _dated_modifiers_met

_dated_modifiers_met contains mor if lib.valid_date(input.dataset.moratorium_until)

_dated_modifiers_met contains ts if {
	lib.valid_date(input.dataset.use_until)
	not lib.after_day(input.dataset.use_until)
}

# --- the purpose -----------------------------------------------------------------------------------------

deny contains "the purpose names no DUO research purpose code" if count(purpose_codes) == 0

deny contains msg if {
	some p in purpose_codes
	not lib.is_permission(p)
	msg := sprintf("%s is not a DUO research purpose code", [p])
}

deny contains msg if {
	lib.disease_specific in purpose_codes
	not is_string(_disease)
	msg := "disease-specific research (DUO:0000007) needs a disease term in the purpose"
}

# --- dataset consent -------------------------------------------------------------------------------------

_dataset_permits(p) if {
	some c in dataset_codes
	lib.is_permission(c)
	lib.permits(c, _dataset_diseases, p, _disease)
}

deny contains msg if {
	some p in purpose_codes
	lib.is_permission(p)
	not _dataset_permits(p)
	msg := sprintf("the consent of dataset %s does not cover the purpose %s", [_dataset_id, lib.duo_label(p)])
}

deny contains msg if {
	some c in dataset_codes
	not lib.duo_terms[c]
	msg := sprintf("dataset %s carries %s, which is not a DUO code this site knows", [_dataset_id, c])
}

deny contains msg if {
	some c in dataset_codes
	lib.is_modifier(c)
	not c in handled_modifiers
	msg := sprintf("dataset %s carries the DUO modifier %s, which this site's policy cannot check", [_dataset_id, lib.duo_label(c)])
}

deny contains msg if {
	npu in dataset_codes
	not npu in satisfied
	msg := sprintf("dataset %s is for not-for-profit organisations only (DUO:0000045) and %s is not registered as one", [_dataset_id, input.requester.org])
}

deny contains msg if {
	ncu in dataset_codes
	not ncu in satisfied
	msg := sprintf("dataset %s is for non-commercial use only (DUO:0000046) and %s does not exclude commercial use", [_dataset_id, input.dsa])
}

deny contains msg if {
	npuncu in dataset_codes
	not npuncu in satisfied
	msg := sprintf("dataset %s is for not-for-profit, non-commercial use only (DUO:0000018)", [_dataset_id])
}

deny contains msg if {
	irb in dataset_codes
	not irb in satisfied
	msg := sprintf("dataset %s requires ethics approval (DUO:0000021) and the purpose carries no approval id", [_dataset_id])
}

deny contains msg if {
	gs in dataset_codes
	not gs in satisfied
	msg := sprintf("dataset %s may be used only in %s (DUO:0000022)", [_dataset_id, concat(", ", sort(_geographic_area))])
}

deny contains msg if {
	mor in dataset_codes
	not mor in _dataset_satisfied
	msg := sprintf("dataset %s carries a publication moratorium (DUO:0000024) without a valid end date", [_dataset_id])
}

deny contains msg if {
	ts in dataset_codes
	not lib.valid_date(input.dataset.use_until)
	msg := sprintf("dataset %s carries a time limit on use (DUO:0000025) without a valid end date", [_dataset_id])
}

deny contains msg if {
	ts in dataset_codes
	lib.after_day(input.dataset.use_until)
	msg := sprintf("the time limit on use of dataset %s (DUO:0000025) ended on %s", [_dataset_id, input.dataset.use_until])
}

deny contains msg if {
	col in dataset_codes
	not col in satisfied
	msg := sprintf("dataset %s requires collaboration with the data holder (DUO:0000020) and %s names none", [_dataset_id, input.dsa])
}

deny contains msg if {
	rtn in dataset_codes
	not rtn in satisfied
	msg := sprintf("dataset %s requires return of results (DUO:0000029) and %s does not provide for it", [_dataset_id, input.dsa])
}

deny contains msg if {
	npoa in dataset_codes
	not npoa in satisfied
	msg := sprintf("dataset %s prohibits population origins or ancestry research (DUO:0000044)", [_dataset_id])
}

allow contains msg if {
	count(purpose_codes) > 0
	every p in purpose_codes {
		_dataset_permits(p)
	}
	msg := sprintf("the consent of dataset %s covers the purpose %s", [_dataset_id, concat(", ", sort(purpose_codes))])
}

# An open moratorium does not stop the query; the answer carries the date before which it must not be published.
publication_moratorium_until := input.dataset.moratorium_until if {
	mor in dataset_codes
	lib.before_day(input.dataset.moratorium_until)
}

# --- patient consent -------------------------------------------------------------------------------------

_permission_codes := {c | some c, term in lib.duo_terms; term.kind == "permission"}

# Per-patient disease terms are not stored, so a patient's disease-specific consent never matches a purpose.
_patient_group(p) := sort({c | some c in _permission_codes; c != lib.disease_specific; lib.duo_covers(c, p)})

_patient_consent := object.get(lib.site, "patient_consent", {})

# A patient stays in the query when not withdrawn, holding one code of every group in require_any_of, and
# holding no code outside allowed_codes (unknown and unmet restrictions exclude).
consent_filter := {
	"withdrawn_column": object.get(_patient_consent, "withdrawn_column", "consent_withdrawn"),
	"consent_column": object.get(_patient_consent, "consent_column", "consent_duo"),
	"separator": " ",
	"require_any_of": [_patient_group(p) | some p in sort(purpose_codes)],
	"allowed_codes": sort(_permission_codes | satisfied),
}

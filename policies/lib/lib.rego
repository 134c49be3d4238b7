# Shared helpers: the request's agreement, dates as nanoseconds, and the DUO and disease hierarchies.
package fedgate.lib

import rego.v1

_date_re := `^[0-9]{4}-[0-9]{2}-[0-9]{2}$`

_timestamp_re := `^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$`

# Shape checks come before the built-ins: OPA turns a built-in error into "undefined", the embedded engine
# raises, and the two engines must agree.
valid_timestamp(ts) if {
	is_string(ts)
	regex.match(_timestamp_re, ts)
}

valid_date(d) if {
	is_string(d)
	regex.match(_date_re, d)
}

now_ns := time.parse_rfc3339_ns(input.now) if valid_timestamp(input.now)

# Today's date in UTC, as YYYY-MM-DD. Dates in data and input are YYYY-MM-DD too (the loader and the
# input model check that), so comparing them is comparing strings: far cheaper than parsing each one.
today := sprintf("%04d-%02d-%02d", time.date(now_ns))

# A date "YYYY-MM-DD" is a whole UTC day: before_day is true until it starts, after_day once it has ended.
before_day(d) if {
	is_string(d)
	today < d
}

after_day(d) if {
	is_string(d)
	today > d
}

duo_terms := data.fedgate_data.duo.terms

# The bundle loader derives these graphs from duo.json (data.fedgate_data.derived); building them here
# instead costs a comprehension per evaluation, so that is only the fallback for hand-made data.
_duo_parents := g if {
	g := data.fedgate_data.derived.duo_parents
} else := {code: object.get(term, "parents", []) | some code, term in duo_terms}

_disease_parents := g if {
	g := data.fedgate_data.derived.disease_parents
} else := {code: object.get(term, "parents", []) | some code, term in data.fedgate_data.duo.diseases}

is_permission(code) if duo_terms[code].kind == "permission"

is_modifier(code) if duo_terms[code].kind == "modifier"

duo_label(code) := sprintf("%s (%s)", [code, duo_terms[code].label]) if duo_terms[code]

duo_label(code) := code if not duo_terms[code]

purpose_codes := strings_of(object.get(input, ["purpose", "duo"], []))

# Ancestors of the request's purpose codes and disease, computed once per evaluation: every coverage
# question the policies ask is about them, and the engine does not cache function results.
_purpose_ancestors := {p: graph.reachable(_duo_parents, {p}) | some p in purpose_codes}

_disease_ancestors := graph.reachable(_disease_parents, {input.purpose.disease}) if is_string(input.purpose.disease)

duo_ancestors(code) := a if {
	a := _purpose_ancestors[code]
} else := graph.reachable(_duo_parents, {code})

_disease_ancestors_of(code) := _disease_ancestors if {
	code == input.purpose.disease
} else := graph.reachable(_disease_parents, {code})

# A permission code covers a purpose when it is the purpose or one of its ancestors in DUO.
duo_covers(permission, purpose) if permission in duo_ancestors(purpose)

disease_covers(consented, requested) if consented in _disease_ancestors_of(requested)

# Disease-specific research (DUO:0000007) is covered only when the requested disease is covered too.
disease_specific := "DUO:0000007"

# A permission code (with its disease terms, if disease-specific) covers a purpose code and disease.
permits(permission, diseases, purpose, disease) if {
	permission != disease_specific
	duo_covers(permission, purpose)
}

permits(permission, diseases, purpose, disease) if {
	permission == disease_specific
	duo_covers(permission, purpose)
	some consented in diseases
	disease_covers(consented, disease)
}

strings_of(xs) := {x | some x in xs; is_string(x)}

# Shared helpers: the request's agreement, dates as nanoseconds, and the DUO and disease hierarchies.
package fedgate.lib

import rego.v1

_day_ns := 86400000000000

_date_re := `^[0-9]{4}-[0-9]{2}-[0-9]{2}$`

_timestamp_re := `^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$`

# The agreement the request names; undefined when the site has no such agreement.
dsa := data.fedgate_data.agreements[input.dsa] if is_string(input.dsa)

site := data.fedgate_data.site

organisation := data.fedgate_data.organisations[input.requester.org] if is_string(input.requester.org)

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

# A date "YYYY-MM-DD" starts at 00:00 UTC and lasts the whole day.
day_start_ns(d) := time.parse_rfc3339_ns(concat("", [d, "T00:00:00Z"])) if valid_date(d)

day_end_ns(d) := day_start_ns(d) + _day_ns

before_day(d) if now_ns < day_start_ns(d)

after_day(d) if now_ns >= day_end_ns(d)

duo_terms := data.fedgate_data.duo.terms

_duo_parents := {code: object.get(term, "parents", []) | some code, term in duo_terms}

_disease_parents := {code: object.get(term, "parents", []) | some code, term in data.fedgate_data.duo.diseases}

is_permission(code) if duo_terms[code].kind == "permission"

is_modifier(code) if duo_terms[code].kind == "modifier"

duo_label(code) := sprintf("%s (%s)", [code, duo_terms[code].label]) if duo_terms[code]

duo_label(code) := code if not duo_terms[code]

# A permission code covers a purpose when it is the purpose or one of its ancestors in DUO.
duo_covers(permission, purpose) if permission in graph.reachable(_duo_parents, {purpose})

disease_covers(consented, requested) if consented in graph.reachable(_disease_parents, {requested})

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

# Shared helpers: dates, and the DUO and disease hierarchies the consent and agreement rules ask about.
#
# A note on speed, for all packages: the embedded engine spends about 5 µs on each complete rule it
# evaluates and about 1 µs on each expression, so the policies alias data and input with `import` (free)
# rather than with helper rules, and read another package's rules by full path (data.fedgate.x.rule): a rule
# read through a package alias (`import data.fedgate.x` then `x.rule`) makes it evaluate the whole package.
package fedgate.lib

import rego.v1

import data.fedgate_data.derived
import data.fedgate_data.duo

# Shape checks come before the built-ins: OPA turns a built-in error into "undefined", the embedded engine
# raises, and the two engines must agree.
valid_timestamp(ts) if {
	is_string(ts)
	regex.match(`^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$`, ts)
}

valid_date(d) if {
	is_string(d)
	regex.match(`^[0-9]{4}-[0-9]{2}-[0-9]{2}$`, d)
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

# The bundle loader derives these graphs from duo.json (data.fedgate_data.derived); building them here is
# only the fallback for hand-made data such as the test fixtures.
_duo_parents := derived.duo_parents if derived.duo_parents

else := {code: object.get(term, "parents", []) | some code, term in duo.terms}

_disease_parents := derived.disease_parents if derived.disease_parents

else := {code: object.get(term, "parents", []) | some code, term in object.get(duo, "diseases", {})}

is_permission(code) if duo.terms[code].kind == "permission"

duo_label(code) := sprintf("%s (%s)", [code, duo.terms[code].label]) if duo.terms[code]

else := code

strings_of(xs) := {x | some x in xs; is_string(x)}

# true or false, never undefined, so it can be a value in an object.
is_non_empty_string(v) := true if {
	is_string(v)
	v != ""
} else := false

purpose_codes := strings_of(input.purpose.duo) if is_array(input.purpose.duo)

else := set()

# Ancestors of the request's purpose codes and disease, computed once per evaluation: every coverage
# question the policies ask is about them, and the engine does not cache function results.
_purpose_ancestors := {p: graph.reachable(_duo_parents, {p}) | some p in purpose_codes}

_disease_ancestors := graph.reachable(_disease_parents, {input.purpose.disease}) if is_string(input.purpose.disease)

duo_ancestors(code) := _purpose_ancestors[code] if _purpose_ancestors[code]

else := graph.reachable(_duo_parents, {code})

_disease_ancestors_of(code) := _disease_ancestors if code == input.purpose.disease

else := graph.reachable(_disease_parents, {code})

# A permission code covers a purpose when it is the purpose or one of its ancestors in DUO.
duo_covers(permission, purpose) if permission in duo_ancestors(purpose)

# A permission code (with its disease terms, if disease-specific research, DUO:0000007) covers a purpose
# code and disease; disease-specific consent covers only diseases at or below one of its terms.
permits(permission, diseases, purpose, disease) if {
	permission != "DUO:0000007"
	permission in duo_ancestors(purpose)
}

permits("DUO:0000007", diseases, purpose, disease) if {
	"DUO:0000007" in duo_ancestors(purpose)
	some consented in diseases
	consented in _disease_ancestors_of(disease)
}

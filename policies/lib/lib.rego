# Shared helpers: dates, and the DUO and disease hierarchies the consent and agreement rules ask about.
#
# Three rules for all packages, because the gateway decides on regorus' compiled engine, the RVM (see
# docs/policy.md, "Engines"), which differs from OPA and the tree-walking engine the tests run on:
# - a lookup that may be missing is checked on a line of its own before it is assigned (`_dsa.visa` then
#   `required := _dsa.visa`), and a rule or function whose value is such a lookup has it as its condition
#   (`v := t[k] if t[k]`): the RVM binds `x := <missing>` to "undefined" and carries on, where the
#   others fail the body (and move on to the `else`);
# - no `walk`: the RVM cannot compile it, and the bundle loader refuses policies it cannot compile;
# - a comprehension tests its conditions only inside its own `some` iteration (`{m | some x in xs; ...}`,
#   never `{m | cond; m := ...}`; a conditional value is a rule of its own): the RVM, run to completion,
#   mis-evaluates a condition that fails outside, and the gateway runs no policies that have one on it.
#
# A note on speed, for all packages, measured on the tree-walking engine (which decided before the RVM):
# its cost per decision is the number of things it evaluates, not the size of the data: about 2-3 µs for
# each complete rule and each function call, about 1 µs for each rule body (a `deny` clause that fails at
# its first line too), expression and built-in, less for a turn of a loop. So rules are few, and:
# - read policy data through each package's `_data` rule, never as data.fedgate_data.x or through an
#   `import` alias of it: the engine resolves each reference into the base data document by scanning every
#   policy module (about 2 µs each time), while a reference to a rule it has evaluated is a lookup;
# - read another package's rules by full path (data.fedgate.x.rule): a rule read through a package alias
#   (`import data.fedgate.x` then `x.rule`) makes the engine evaluate the whole package;
# - look up tables that depend on the data alone (DUO ancestors, covering permissions, each agreement's
#   limits) in data.fedgate_data.derived, which the bundle loader fills once; each such rule falls back
#   to computing its table when the table is absent (the test fixtures), so both paths are the same code;
# - check the timestamp once (`today`) and compare YYYY-MM-DD dates as strings.
package fedgate.lib

import rego.v1

# Policy data is read through this one rule (see above).
_data := data.fedgate_data

# Shape checks come before the built-ins: OPA turns a built-in error into "undefined", the embedded engine
# raises, and the two engines must agree. A shape is checked on the text with every ASCII digit written as
# 0, against a template: what `[0-9]` in a regular expression would check, without one (regorus compiles a
# regular expression on every call, which costs more than the whole check).
_digits_as_zero := {"1": "0", "2": "0", "3": "0", "4": "0", "5": "0", "6": "0", "7": "0", "8": "0", "9": "0"}

# YYYY-MM-DD
valid_date(d) if {
	is_string(d)
	strings.replace_n(_digits_as_zero, d) == "0000-00-00"
}

# Today's date in UTC, as YYYY-MM-DD, or undefined when input.now is not an RFC 3339 timestamp (checked
# first, see above): YYYY-MM-DDTHH:MM:SS, an optional fraction of a second (a dot and one or more digits),
# then Z or an offset +HH:MM or -HH:MM. Dates in data and input are YYYY-MM-DD too (the loader and the input
# model check that), so comparing them is comparing strings: far cheaper than parsing each one. The one
# timestamp check of a decision happens here: decision.rego's well-formedness check reads this rule.
today := sprintf("%04d-%02d-%02d", time.date(time.parse_rfc3339_ns(input.now))) if {
	is_string(input.now)
	shape := strings.replace_n(_digits_as_zero, input.now)
	substring(shape, 0, 19) == "0000-00-00T00:00:00"
	rest := substring(shape, 19, -1)
	zone := trim_left(rest, ".0")
	zone in {"Z", "+00:00", "-00:00"}
	fraction := trim_suffix(rest, zone)
	# "" or a dot and one or more zeros
	trim_right(fraction, "0") == substring(".", 0, count(fraction))
	fraction != "."
}

# A date "YYYY-MM-DD" is a whole UTC day: before_day is true until it starts, after_day once it has ended.
before_day(d) if {
	is_string(d)
	today < d
}

after_day(d) if {
	is_string(d)
	today > d
}

# Every DUO term and disease with its ancestors, itself included. The bundle loader derives these tables
# once (data.fedgate_data.derived); walking the graphs here is only the fallback for hand-made data such as
# the test fixtures. Rules read them by key, so a coverage question is a lookup, not a graph walk.
duo_ancestors := _data.derived.duo_ancestors if _data.derived.duo_ancestors

else := {code: graph.reachable(_duo_parents, {code}) | some code, _ in _data.duo.terms}

disease_ancestors := _data.derived.disease_ancestors if _data.derived.disease_ancestors

else := {code: graph.reachable(_disease_parents, {code}) | some code, _ in object.get(_data.duo, "diseases", {})}

_duo_parents := {code: object.get(term, "parents", []) | some code, term in _data.duo.terms}

_disease_parents := {code: object.get(term, "parents", []) | some code, term in object.get(_data.duo, "diseases", {})}

# For every DUO term, the permission codes other than disease-specific research (DUO:0000007) that cover it:
# the term itself and its ancestors, when they are permissions. Consent or an agreement holding one of them
# permits the purpose outright, and a patient needs one of them (patient consent names no diseases). The
# bundle loader evaluates this once into data.fedgate_data.derived; without it the rule computes the table.
covering_permissions := _data.derived.covering_permissions if _data.derived.covering_permissions

else := {p: sort({c | some c in duo_ancestors[p]; _data.duo.terms[c].kind == "permission"; c != "DUO:0000007"}) | some p, _ in _data.duo.terms}

is_permission(code) if _data.duo.terms[code].kind == "permission"

duo_label(code) := sprintf("%s (%s)", [code, _data.duo.terms[code].label]) if _data.duo.terms[code]

else := code

strings_of(xs) := {x | some x in xs; is_string(x)}

# true or false, never undefined, so it can be a value in an object.
is_non_empty_string(v) := true if {
	is_string(v)
	v != ""
} else := false

# The country the requester's organisation is registered in (organisations.json): the answer reaches it
# whatever country the token claims for the requester. Undefined for an organisation this site does not
# know, which the transfer rules deny.
organisation_country := c if {
	_data.organisations[input.requester.org].country # a lookup is checked before it is assigned (see above)
	c := _data.organisations[input.requester.org].country
}

# Written out rather than through strings_of: a function call costs more than the comprehension.
purpose_codes := {x | some x in input.purpose.duo; is_string(x)} if is_array(input.purpose.duo)

else := set()

# A permission code covers a purpose when it is the purpose or one of its ancestors in DUO. An unknown
# purpose is covered by nothing.
duo_covers(permission, purpose) if permission in duo_ancestors[purpose]

# A permission code (with its disease terms, if disease-specific research, DUO:0000007) covers a purpose
# code and disease; disease-specific consent covers only diseases at or below one of its terms.
permits(permission, diseases, purpose, disease) if {
	permission != "DUO:0000007"
	permission in duo_ancestors[purpose]
}

permits("DUO:0000007", diseases, purpose, disease) if {
	"DUO:0000007" in duo_ancestors[purpose]
	some consented in diseases
	consented in disease_ancestors[disease]
}

package fedgate.lib_test

import rego.v1

import data.fedgate.lib

_duo := {"terms": {
	"DUO:0000004": {"kind": "permission", "label": "no restriction", "parents": []},
	"DUO:0000042": {"kind": "permission", "label": "general research use", "parents": ["DUO:0000004"]},
	"DUO:0000006": {"kind": "permission", "label": "health or medical or biomedical research", "parents": ["DUO:0000042"]},
	"DUO:0000007": {"kind": "permission", "label": "disease specific research", "parents": ["DUO:0000006"]},
	"DUO:0000011": {"kind": "permission", "label": "population origins or ancestry research only", "parents": ["DUO:0000042"]},
	"DUO:0000021": {"kind": "modifier", "label": "ethics approval required", "parents": []},
}, "diseases": {
	"MONDO:0005015": {"label": "diabetes mellitus", "parents": []},
	"MONDO:0005148": {"label": "type 2 diabetes mellitus", "parents": ["MONDO:0005015"]},
	"MONDO:0007254": {"label": "breast cancer", "parents": []},
}}

test_general_research_covers_disease_specific if {
	lib.duo_covers("DUO:0000042", "DUO:0000007") with data.fedgate_data.duo as _duo
}

test_disease_specific_does_not_cover_general_research if {
	not lib.duo_covers("DUO:0000007", "DUO:0000042") with data.fedgate_data.duo as _duo
}

test_ancestry_research_is_not_medical_research if {
	not lib.duo_covers("DUO:0000006", "DUO:0000011") with data.fedgate_data.duo as _duo
}

test_disease_consent_covers_narrower_disease if {
	lib.permits("DUO:0000007", ["MONDO:0005015"], "DUO:0000007", "MONDO:0005148") with data.fedgate_data.duo as _duo
}

test_disease_consent_does_not_cover_other_disease if {
	not lib.permits("DUO:0000007", ["MONDO:0005015"], "DUO:0000007", "MONDO:0007254") with data.fedgate_data.duo as _duo
}

test_expired_after_last_day if {
	lib.after_day("2026-06-30") with input.now as "2026-07-01T00:00:00Z"
}

test_not_expired_on_last_day if {
	not lib.after_day("2026-06-30") with input.now as "2026-06-30T23:59:59Z"
}

test_malformed_now_has_no_today if {
	not lib.today with input.now as "yesterday"
	not lib.today with input.now as "2026-05-01 10:00"
	lib.today == "2026-04-30" with input.now as "2026-05-01T01:00:00+02:00"
}

# RFC 3339 as the gateway writes it: YYYY-MM-DDTHH:MM:SS, an optional fraction, then Z or +HH:MM / -HH:MM.
test_today_accepts_fractions_and_offsets if {
	lib.today == "2026-05-01" with input.now as "2026-05-01T10:00:00Z"
	lib.today == "2026-05-01" with input.now as "2026-05-01T10:00:00.5Z"
	lib.today == "2026-05-01" with input.now as "2026-05-01T10:00:00.123456789-00:00"
	lib.today == "2026-05-02" with input.now as "2026-05-01T23:30:00-02:00"
	lib.today == "2026-04-30" with input.now as "2026-05-01T00:30:00.0+01:00"
}

test_today_refuses_other_shapes if {
	not lib.today with input.now as ""
	not lib.today with input.now as "2026-05-01T10:00:00"
	not lib.today with input.now as "2026-05-01T10:00:00z"
	not lib.today with input.now as "2026-05-01t10:00:00Z"
	not lib.today with input.now as "2026-05-01T10:00:00.Z"
	not lib.today with input.now as "2026-05-01T10:00:000Z"
	not lib.today with input.now as "2026-05-01T10:00:00..0Z"
	not lib.today with input.now as "2026-05-01T10:00:00.0.0Z"
	not lib.today with input.now as "2026-05-01T10:00:00+0000"
	not lib.today with input.now as "2026-05-01T10:00:00+00:00Z"
	not lib.today with input.now as "2026-05-01T10:00:00Z "
	not lib.today with input.now as "2026-5-01T10:00:00Z"
	not lib.today with input.now as "2026-05-01T10:00:0٣Z"
	not lib.today with input.now as 20260501
}

test_valid_date_is_yyyy_mm_dd if {
	lib.valid_date("2026-09-30")
	not lib.valid_date("2026-9-30")
	not lib.valid_date("2026-09-30T00:00:00Z")
	not lib.valid_date("2026/09/30")
	not lib.valid_date(" 2026-09-30")
	not lib.valid_date(20260930)
}

test_before_first_day if {
	lib.before_day("2026-01-01") with input.now as "2025-12-31T23:00:00+00:00"
}

package fedgate.transfer_test

import rego.v1

import data.fedgate.fixtures_test as fx
import data.fedgate.transfer

_deny(req, d) := reasons if {
	reasons := transfer.deny with input as req with data.fedgate_data as d
}

_allow(req, d) := reasons if {
	reasons := transfer.allow with input as req with data.fedgate_data as d
}

_denied(req, d, fragment) if {
	some reason in _deny(req, d)
	contains(reason, fragment)
}

_to(requester, destination) := fx.request_with({
	"requester": {"country": requester},
	"destination": {"country": destination},
})

_genomes(requester, destination) := object.union(_to(requester, destination), {"dataset": {"id": "ds-genomes"}})

# The fixture data with one more organisation, registered in `country`, and a request from it.
_registered_in(country) := fx.data_with({"organisations": {"org-r": {"name": "Hospital R", "country": country, "non_profit": true}}})

_from_org_r(requester, destination) := object.union(_to(requester, destination), {"requester": {"org": "org-r"}})

test_allow_same_jurisdiction if {
	req := _to("DE", "DE")
	count(_deny(req, fx.policy_data)) == 0
	"transfer to DE (the destination's country) rests on the site's own jurisdiction" in _allow(req, fx.policy_data)
}

test_allow_within_the_eea if {
	count(_deny(_to("FR", "NL"), fx.policy_data)) == 0
	"transfer to NL (the destination's country) rests on the EEA, which also holds the site" in _allow(_to("FR", "NL"), fx.policy_data)
}

test_eea_does_not_help_a_site_outside_it if {
	d := fx.data_with({"site": {"jurisdiction": "JP"}, "transfer": {"adequacy": {}}})
	_denied(_to("FR", "FR"), d, "no legal basis to transfer data from JP to FR")
}

test_allow_under_adequacy_decision if {
	"transfer to JP (the requester's country) rests on an adequacy decision (Commission Implementing Decision (EU) 2019/419)" in _allow(_to("JP", "JP"), fx.policy_data)
	count(_deny(_to("JP", "JP"), fx.policy_data)) == 0
}

test_deny_without_adequacy_or_clauses if {
	_denied(_to("BR", "BR"), fx.policy_data, "no legal basis to transfer data from DE to BR (the requester's country)")
}

test_allow_under_standard_contractual_clauses_named_in_dsa if {
	count(_deny(_to("US", "US"), fx.policy_data)) == 0
	"transfer to US (the destination's country) rests on standard contractual clauses SCC-US-1 in DSA-T-1" in _allow(_to("US", "US"), fx.policy_data)
}

test_deny_when_dsa_names_no_clauses_for_country if {
	d := fx.dsa_with({"standard_contractual_clauses": []})
	_denied(_to("US", "US"), d, "DSA-T-1 names no standard contractual clauses for US")
}

test_deny_destination_checked_separately_from_requester if {
	_denied(_to("FR", "BR"), fx.policy_data, "BR (the destination's country)")
	not _denied(_to("FR", "BR"), fx.policy_data, "FR (the requester's country)")
}

# --- where the requester's organisation is registered ------------------------------------------------------

# A token's country claim does not move the organisation: the answer reaches it where it is registered.
test_deny_when_organisations_country_has_no_legal_basis if {
	reasons := _deny(_from_org_r("FR", "FR"), _registered_in("BR"))
	reasons == {"no legal basis to transfer data from DE to BR (the requester's organisation's country): no adequacy decision, and DSA-T-1 names no standard contractual clauses for BR"}
}

test_deny_when_organisations_country_is_blocked if {
	"transfers to KP (the requester's organisation's country) are blocked by this site" in _deny(_from_org_r("FR", "FR"), _registered_in("KP"))
}

test_allow_names_the_organisations_country_and_its_basis if {
	req := _from_org_r("FR", "FR")
	d := _registered_in("US")
	count(_deny(req, d)) == 0
	"transfer to US (the requester's organisation's country) rests on standard contractual clauses SCC-US-1 in DSA-T-1" in _allow(req, d)
}

# The organisation's country is named only when it is another one than the requester's and destination's.
test_organisation_in_the_requesters_country_adds_no_clause if {
	_allow(_to("FR", "FR"), fx.policy_data) == {
		"transfer to FR (the destination's country) rests on the EEA, which also holds the site",
		"transfer to FR (the requester's country) rests on the EEA, which also holds the site",
	}
}

test_deny_organisation_this_site_does_not_know if {
	req := fx.request_with({"requester": {"org": "org-x"}})
	_deny(req, fx.policy_data) == {"organisation org-x is not registered with this site, so the country the answer would reach cannot be checked"}
}

test_deny_blocked_destination if {
	"transfers to KP (the destination's country) are blocked by this site" in _deny(_to("FR", "KP"), fx.policy_data)
}

test_blocked_list_overrides_clauses if {
	d := fx.dsa_with({"standard_contractual_clauses": [{"id": "SCC-X", "countries": ["KP"]}]})
	_denied(_to("KP", "FR"), d, "are blocked")
}

# --- export control --------------------------------------------------------------------------------------

test_allow_export_controlled_dataset_under_valid_licence if {
	req := _genomes("FR", "FR")
	count(_deny(req, fx.policy_data)) == 0
	"dataset ds-genomes is export-controlled (class GEN-1) and covered by a valid export licence" in _allow(req, fx.policy_data)
}

test_deny_export_controlled_dataset_without_licence if {
	d := fx.dsa_with({"export_licences": []})
	"dataset ds-genomes is export-controlled (class GEN-1) and DSA-T-1 names no export licence for that class" in _deny(_genomes("FR", "FR"), d)
}

test_deny_export_licence_of_another_class if {
	d := fx.data_with({"export_control": {"licences": {"EXL-1": {"class": "GEN-2"}}}})
	_denied(_genomes("FR", "FR"), d, "names no export licence for that class")
}

test_deny_expired_export_licence if {
	req := object.union(_genomes("FR", "FR"), {"now": "2027-01-01T00:00:00Z"})
	"export licence EXL-1 expired on 2026-12-31" in _deny(req, fx.policy_data)
}

test_deny_export_licence_not_yet_valid if {
	req := object.union(_genomes("FR", "FR"), {"now": "2025-12-31T12:00:00Z"})
	"export licence EXL-1 is not valid before 2026-01-01" in _deny(req, fx.policy_data)
}

test_deny_export_licence_destination_not_permitted if {
	d := fx.data_with({"transfer": {"eea": ["AT", "DE", "FR", "NL"]}})
	"export licence EXL-1 does not permit NL (the destination's country) as a destination" in _deny(_genomes("NL", "NL"), d)
}

test_deny_re_export_under_restricted_licence if {
	"export licence EXL-1 forbids re-export from FR to JP" in _deny(_genomes("FR", "JP"), fx.policy_data)
}

test_deny_export_licence_that_does_not_permit_the_organisations_country if {
	d := object.union(_registered_in("US"), {"export_control": {"licences": {"EXL-1": {"re_export": true}}}})
	req := object.union(_from_org_r("FR", "FR"), {"dataset": {"id": "ds-genomes"}})
	_deny(req, d) == {"export licence EXL-1 does not permit US (the requester's organisation's country) as a destination"}
}

test_deny_re_export_to_the_organisations_country if {
	req := object.union(_from_org_r("FR", "FR"), {"dataset": {"id": "ds-genomes"}})
	_deny(req, _registered_in("JP")) == {"export licence EXL-1 forbids re-export from FR to JP (the requester's organisation's country)"}
}

test_allow_re_export_when_licence_permits_it if {
	d := fx.data_with({"export_control": {"licences": {"EXL-1": {"re_export": true}}}})
	count(_deny(_genomes("FR", "JP"), d)) == 0
}

test_unclassified_dataset_needs_no_licence if {
	d := fx.dsa_with({"export_licences": []})
	count(_deny(fx.request, d)) == 0
}

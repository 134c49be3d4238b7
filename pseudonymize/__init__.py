"""Local pseudonymization: keyed pseudonyms, date shifting, generalization, risk report, the store."""

"""Tamper-evident audit log: hash chain, RFC 9162 Merkle tree, signed checkpoints, witnesses, verifier."""

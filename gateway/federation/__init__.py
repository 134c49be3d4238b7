"""Federation: peer authentication, the coordinator's fan-out and the pooling of what sites released.

Modules: `signing` (Ed25519 JWT peer assertions), `replay` (nonce ledger), `peers` (registry, the check on
incoming peer requests), `coordinator` (fan-out and per-site statuses), `combine` (counts, cross-tabs,
histograms, summaries), `quantiles` (bracketed federated quantiles); the GLM, Kaplan–Meier and witnessing
modules sit beside them. Submodules are imported by name; this package imports nothing eagerly.

Errors::

    PeerAuthError (signing)            a peer request's assertion is refused -> peer.rejected, 401
    ├── MalformedAssertion
    ├── UnknownPeer
    ├── BadPeerSignature
    ├── StaleAssertion
    ├── ReplayedAssertion
    └── RequestMismatch
    PeerKeyError (signing)             the peer signing key file is unusable
    CombineError (combine)             site answers cannot be pooled
    └── InvalidSiteAnswer              one site's answer is malformed; that site is "invalid_answer"
"""

"""The test identity provider: the loopback-only `UnsafeLocalIdentityProvider` under its test name."""

from gateway.auth.local_idp import UnsafeLocalIdentityProvider as LoopbackTestIssuer

__all__ = ["LoopbackTestIssuer"]

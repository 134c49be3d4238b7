"""The site's keys as the settings locate them; key bytes stay inside `SecretKey`."""

from __future__ import annotations

from gateway.settings import SiteSettings
from pseudonymize.keys import SecretKey, write_new_key


def load_master_key(settings: SiteSettings) -> SecretKey:
    """The site master key from its file or environment variable (KeyMaterialError when unusable)."""
    if settings.master_key_file is not None:
        return SecretKey.from_file(settings.master_key_file)
    assert settings.master_key_env is not None
    return SecretKey.from_env(settings.master_key_env)


def create_master_key(settings: SiteSettings) -> SecretKey:
    """Write a new master key to the settings' key file (never over an existing one)."""
    if settings.master_key_file is None:
        from pseudonymize.errors import KeyMaterialError

        raise KeyMaterialError(
            f"the master key comes from ${settings.master_key_env}; generate one with a secrets manager"
        )
    return write_new_key(settings.master_key_file)

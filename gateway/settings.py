"""Site settings: one TOML file per site, with FEDGATE_* environment variables overriding its keys.

Relative paths in the file are resolved against the file's own folder, so a site folder can be moved whole.
Unknown keys, missing required keys and malformed values are `ConfigError`s that name the file, the key
and, where the key is present, its line.
"""

from __future__ import annotations

import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.countries import is_country

ENV_PREFIX = "FEDGATE_"
_SITE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class ConfigError(Exception):
    """A site configuration file cannot be used; the message names the file, the key and the line."""

    def __init__(self, path: Path, key: str | None, message: str, line: int | None = None) -> None:
        self.path = path
        self.key = key
        self.line = line
        where = f"{path}"
        if line is not None:
            where += f":{line}"
        what = f"{key}: {message}" if key else message
        super().__init__(f"{where}: {what}")


class SiteSettings(BaseSettings):
    """Everything one site's gateway and CLI need to know about where things are."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    site_id: str = Field(description="short lower-case name of this site, e.g. 'site-de'")
    jurisdiction: str = Field(description="ISO 3166-1 alpha-2 country whose law governs this site's data")
    store_url: str = Field(
        description="SQLAlchemy URL of the pseudonymized store (duckdb:///…, postgresql://…)"
    )
    audit_url: str = Field(description="SQLAlchemy URL of the audit log store (sqlite:///…, postgresql://…)")
    policy_dir: Path = Field(description="folder holding the Rego policies and their data/")
    master_key_file: Path | None = Field(default=None, description="file holding the site master key")
    master_key_env: str | None = Field(
        default=None, description="environment variable holding the master key"
    )
    log_key_file: Path = Field(description="file holding the site's Ed25519 audit-log signing key")
    audit_origin: str = Field(
        default="", description="log name in checkpoints; default fedgate.example/<site_id>"
    )
    policy_engine: Literal["embedded", "opa"] = "embedded"
    opa_url: str | None = None
    opa_timeout_s: float = Field(default=2.0, gt=0, le=60)
    dev_mode: bool = False

    @field_validator("site_id")
    @classmethod
    def _site_id_shape(cls, value: str) -> str:
        if not _SITE_ID.match(value):
            raise ValueError("must be lower-case letters, digits and '-', starting with a letter or digit")
        return value

    @field_validator("jurisdiction")
    @classmethod
    def _jurisdiction_is_country(cls, value: str) -> str:
        if not is_country(value):
            raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code (e.g. 'DE')")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> SiteSettings:
        if (self.master_key_file is None) == (self.master_key_env is None):
            raise ValueError("set exactly one of master_key_file and master_key_env")
        if self.policy_engine == "opa" and not self.opa_url:
            raise ValueError("policy_engine = 'opa' needs opa_url")
        if not self.audit_origin:
            object.__setattr__(self, "audit_origin", f"fedgate.example/{self.site_id}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file: init_settings carries the file's values, so env comes first.
        return (env_settings, init_settings)


_PATH_KEYS = ("policy_dir", "master_key_file", "log_key_file")
_URL_PATH = re.compile(r"^(?P<scheme>duckdb|sqlite)(?P<sep>:///)(?P<path>[^/:][^?]*)(?P<rest>\?.*)?$")


def _resolve(base: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Resolve relative file paths and relative duckdb/sqlite URLs against the config file's folder."""
    out = dict(data)
    for key in _PATH_KEYS:
        if isinstance(out.get(key), str) and not Path(out[key]).is_absolute():
            out[key] = str(base / out[key])
    for key in ("store_url", "audit_url"):
        value = out.get(key)
        if isinstance(value, str):
            m = _URL_PATH.match(value)
            if m and m["path"] != ":memory:":
                out[key] = f"{m['scheme']}:///{base / m['path']}{m['rest'] or ''}"
    return out


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=", re.MULTILINE)
    m = pattern.search(text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def load_settings(path: Path | str) -> SiteSettings:
    """Read a site config file (plus environment overrides) into validated settings."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None
    try:
        return SiteSettings(**_resolve(path.resolve().parent, raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        elif first["type"] == "missing":
            message = "required key is missing"
        else:
            message = first["msg"]
        line = _line_of(text, key.split(".")[0]) if key else None
        raise ConfigError(path, key, message, line) from None


@lru_cache(maxsize=8)
def get_settings(path: str) -> SiteSettings:
    """Cached settings for the app's dependency providers; tests override through dependency_overrides."""
    return load_settings(path)

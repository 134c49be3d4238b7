"""Site settings: one TOML file per site, with FEDGATE_* environment variables overriding its keys.

Relative paths in the file (and relative `sqlite:///`/`duckdb:///` URLs) are resolved against the file's
own folder, so a site folder can be moved whole. A relative path set by an environment variable is left
as it is, so it resolves against the current directory, as a path typed in a shell does.
Unknown keys, missing required keys and malformed values are `ConfigError`s that name the file, the key
and, where the key is present, its line; or, where an environment variable set it, that variable. A
FEDGATE_* variable that names no key is an error too: a misspelt override would otherwise leave the file's
value in force while the operator believes it was replaced.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import types
from functools import lru_cache
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Final, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from gateway.countries import is_country

ENV_PREFIX = "FEDGATE_"
# FEDGATE_* variables that fedgate's own processes, benchmarks and tests read and that are not settings keys:
# they override nothing, so they are not errors. A new such variable goes here, or loading a site's settings
# with it set fails. (The variable `master_key_env` names is allowed too, whatever its name.)
PROCESS_VARIABLES: Final = frozenset(
    {
        "FEDGATE_CONFIG",  # gateway/app.py: the config file of a worker started by `uvicorn --factory`
        "FEDGATE_HANDOFF_FD",  # gateway/cli/workers.py: the socket a worker is handed its connections on
        "FEDGATE_BENCH_WAITS",  # bench/waits/sitecustomize.py: the folder the wait recorder writes to
        "FEDGATE_TEST_PG_URL",  # tests/conftest.py: the PostgreSQL server of the `postgres` tests
        "FEDGATE_TEST_OPA_URL",  # tests/integration/real_opa.py: a real OPA server for the policy tests
    }
)
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


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ip_address(host).is_loopback
    except ValueError:
        return False


JwtAlgorithm = Literal["RS256", "ES256", "EdDSA"]


class _KeyProblem(ValueError):
    """A check across keys, blamed on one key (`loc`). When that key is not in the file (it is missing),
    `near` is the key whose line the message points at instead. `involved` are the other keys the check
    read (with `near`), so that the error can name the environment variables that set any of them."""

    def __init__(
        self,
        loc: tuple[str, ...],
        message: str,
        near: tuple[str, ...] | None = None,
        involved: tuple[tuple[str, ...], ...] = (),
    ) -> None:
        super().__init__(message)
        self.loc, self.message, self.near = loc, message, near
        self.involved = involved if near is None or near in involved else (near, *involved)


def _web_url(value: str) -> str:
    """An https:// URL, or plain http on a loopback address; without its trailing '/'."""
    parts = urlsplit(value)
    if parts.hostname and (
        parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname))
    ):
        return value.rstrip("/")
    raise ValueError("must be an https:// URL (plain http only on a loopback address)")


class OidcSettings(BaseModel):
    """The identity provider whose bearer tokens the gateway accepts (table `[oidc]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(description="the issuer URL; discovery is <issuer>/.well-known/openid-configuration")
    audience: str = Field(min_length=1, description="the `aud` this gateway's tokens must carry")
    roles_claim: str = Field(default="roles", description="claim (dotted path) holding the roles")
    org_claim: str = Field(default="org", description="claim holding the requester's organisation")
    country_claim: str = Field(default="country", description="claim holding the requester's country")
    visas_claim: str = Field(default="ga4gh_passport_v1", description="claim holding GA4GH visa JWTs")
    trusted_visa_issuers: tuple[str, ...] = Field(default=(), description="issuers whose visas are accepted")
    algorithms: tuple[JwtAlgorithm, ...] = Field(default=("RS256", "ES256", "EdDSA"), min_length=1)
    leeway_s: int = Field(default=60, ge=0, le=600, description="clock skew allowed on exp/nbf/iat")
    max_token_age_s: int = Field(default=86_400, ge=60, description="reject tokens issued longer ago")
    jwks_min_refresh_s: float = Field(
        default=30.0,
        ge=1,
        description="at most one JWKS refetch per interval; at least 1 s, or unknown kids could make the "
        "gateway fetch the provider's keys on every request",
    )
    http_timeout_s: float = Field(default=5.0, gt=0, le=60)

    @field_validator("issuer")
    @classmethod
    def _https_unless_loopback(cls, value: str) -> str:
        return _web_url(value)


class ServerSettings(BaseModel):
    """Where `fedgate serve` listens (table `[server]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    threads: int = Field(
        default=2,
        ge=1,
        le=256,
        description="threads per worker for store reads, disclosure control and state writes; queries on "
        "small tables run one pass at a time and the others use the remaining threads, so with two a long "
        "query does not hold up the short ones; more only take turns on the interpreter lock",
    )
    switch_interval_ms: float = Field(
        default=10.0,
        ge=1.0,
        le=100.0,
        description="how long, in ms, a worker thread that wants the interpreter lock waits before it asks "
        "the thread holding it to let go (Python's default is 5); longer means fewer forced hand-offs "
        "between a worker's event loop and its threads",
    )
    public_url: str | None = Field(default=None, description="the URL peers and clients use for this gateway")
    store_timeout_s: float = Field(
        default=120.0,
        ge=0.1,
        le=86_400.0,
        description="how long, in seconds, one query may keep the store at work (a DuckDB store: from taking "
        "a connection to giving it back; PostgreSQL: each statement); a query past it is stopped and "
        "refused (503), and its thread serves the next",
    )
    max_header_bytes: int = Field(
        default=128 * 1024,
        ge=80 * 1024,
        le=1024 * 1024,
        description="the most bytes a request's line and headers may hold; a longer head is refused (431) "
        "before the server holds or parses more of it. At least 80 KiB: room for the longest bearer token "
        "the gateway accepts (64 KiB, gateway/auth/bearer.py) and the other headers",
    )
    request_timeout_s: float = Field(
        default=30.0,
        ge=1.0,
        le=3600.0,
        description="how long a request, its headers and its body, may take to arrive from its first byte; "
        "a connection past it is answered 408 and closed. Time the server itself makes a client wait (a "
        "body it has not yet asked for) does not count",
    )
    max_connections: int = Field(
        default=128,
        ge=1,
        le=100_000,
        description="connections each worker serves at once; a request on one more is answered 503 and its "
        "connection closed. It bounds what requests on their way in can hold in a worker's memory",
    )

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return None if value is None else _web_url(value)

    @property
    def is_loopback(self) -> bool:
        """True when the gateway only listens on this machine."""
        return _is_loopback(self.host)


class PeerSettings(BaseModel):
    """One peer gateway of the federation (an entry of `[[peers]]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="the peer's site_id")
    url: str = Field(description="the peer's base URL")
    request_key: str = Field(description="base64 of the peer's Ed25519 request-signing public key (32 bytes)")
    log_key: str = Field(description="the peer's audit-log verifier key (C2SP note verifier key text)")
    witness_key: str | None = Field(
        default=None, description="the peer's witness verifier key, to check the cosignatures it returns"
    )

    @field_validator("id")
    @classmethod
    def _peer_id(cls, value: str) -> str:
        if not _SITE_ID.match(value):
            raise ValueError("must be a site id: lower-case letters, digits and '-'")
        return value

    @field_validator("url")
    @classmethod
    def _peer_url(cls, value: str) -> str:
        return _web_url(value)


class SiteSettings(BaseSettings):
    """Everything one site's gateway and CLI need to know about where things are."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    site_id: str = Field(description="short lower-case name of this site, e.g. 'site-de'")
    jurisdiction: str = Field(description="ISO 3166-1 alpha-2 country whose law governs this site's data")
    store_url: str = Field(
        description="SQLAlchemy URL of the pseudonymized store (duckdb:///…, postgresql://…)"
    )
    audit_url: str = Field(description="SQLAlchemy URL of the audit log store (sqlite:///…, postgresql://…)")
    state_url: str = Field(
        default="",
        description="SQLAlchemy URL of the gateway's own state (approvals, query counts); "
        "default: state.db beside a SQLite audit log",
    )
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
    oidc: OidcSettings | None = None
    server: ServerSettings = ServerSettings()
    peer_key_file: Path | None = Field(
        default=None, description="Ed25519 key this gateway signs its requests to peers with"
    )
    witness_key_file: Path | None = Field(
        default=None, description="Ed25519 key this gateway cosigns its peers' checkpoints with"
    )
    peers: tuple[PeerSettings, ...] = ()

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

    @field_validator("opa_url")
    @classmethod
    def _opa_url_shape(cls, value: str | None) -> str | None:
        # The messages never repeat the value: a login written into it would be printed with it.
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be http(s)://host[:port]")
        if "@" in parts.netloc:
            raise ValueError(
                "must not carry a user name or password (user:password@): the gateway sends OPA no "
                "credentials, so reach OPA on an address only the gateway can (loopback, a private network)"
            )
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:  # `:0` would be read as no port at all
            raise ValueError("must be http(s)://host[:port] with a port from 1 to 65535") from None
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must not carry a path, query or fragment (the client adds /v1/…)")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> SiteSettings:
        if (self.master_key_file is None) == (self.master_key_env is None):
            where = "master_key_env" if self.master_key_file is None else "master_key_file"
            raise _KeyProblem(
                (where,),
                "set exactly one of master_key_file and master_key_env",
                involved=(("master_key_file",), ("master_key_env",)),
            )
        if self.policy_engine == "opa" and not self.opa_url:
            raise _KeyProblem(("opa_url",), "required when policy_engine = 'opa'", ("policy_engine",))
        if not self.audit_origin:
            object.__setattr__(self, "audit_origin", f"fedgate.example/{self.site_id}")
        seen: dict[str, tuple[str, ...]] = {self.site_id: ("site_id",)}
        for i, peer in enumerate(self.peers):
            if peer.id in seen:
                raise _KeyProblem(
                    ("peers", str(i), "id"),
                    "every peer id must be unique and differ from site_id",
                    involved=(seen[peer.id],),
                )
            seen[peer.id] = ("peers", str(i), "id")
        if self.peers and self.peer_key_file is None:
            raise _KeyProblem(("peer_key_file",), "required when peers are configured", ("peers", "0", "id"))
        if not self.state_url:
            if not self.audit_url.startswith("sqlite:///"):
                raise _KeyProblem(("state_url",), "required when the audit log is not a SQLite file",
                                  ("audit_url",))  # fmt: skip
            audit_file = Path(self.audit_url.removeprefix("sqlite:///").split("?")[0])
            object.__setattr__(self, "state_url", f"sqlite:///{audit_file.parent / 'state.db'}")
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


_PATH_KEYS = ("policy_dir", "master_key_file", "log_key_file", "peer_key_file", "witness_key_file")
_URL_PATH = re.compile(r"^(?P<scheme>duckdb|sqlite)(?P<sep>:///)(?P<path>[^/:][^?]*)(?P<rest>\?.*)?$")


def _resolve(base: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Resolve relative file paths and relative duckdb/sqlite URLs against the config file's folder."""
    out = dict(data)
    for key in _PATH_KEYS:
        if isinstance(out.get(key), str) and not Path(out[key]).is_absolute():
            out[key] = str(base / out[key])
    for key in ("store_url", "audit_url", "state_url"):
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


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\s-]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def _line_at(text: str, loc: tuple[str, ...]) -> int | None:
    """The line that sets the key at `loc` (e.g. ("peers", "1", "url"): the url of the second [[peers]]),
    following the file's table headers; None when the file does not set it there."""
    table: tuple[str, ...] = ()
    arrays: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            path = tuple(part.strip() for part in header[2].split("."))
            if header[1] == "[[":
                arrays[path] = arrays.get(path, -1) + 1
                path = (*path, str(arrays[path]))
            table = path
            continue
        key = _KEY.match(line)
        if key and (*table, key[1]) == loc[: len(table) + 1]:
            return number
    return None


def _from_environment(loc: tuple[str, ...]) -> str | None:
    """The environment variable that set the key at `loc`, if one did (it overrides the file)."""
    names = {name.upper(): name for name in os.environ}  # read without regard to case, as the settings are
    for end in range(len(loc), 0, -1):
        name = names.get(ENV_PREFIX + "__".join(loc[:end]).upper())
        if name is not None:
            return name
    return None


def _table_of(annotation: Any) -> type[BaseModel] | None:
    """The table a key holds (`OidcSettings` for `oidc: OidcSettings | None`), whose keys the environment
    can set one by one (FEDGATE_OIDC__ISSUER); None for a plain value or a list such as `peers`."""
    options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    tables = [o for o in options if isinstance(o, type) and issubclass(o, BaseModel)]
    return tables[0] if tables else None


def _setting_variables(model: type[BaseModel] = SiteSettings, prefix: str = ENV_PREFIX) -> list[str]:
    """Every variable that sets a key: FEDGATE_<KEY>, and FEDGATE_<TABLE>__<KEY> for a table's keys."""
    names = []
    for key, field in model.model_fields.items():
        names.append(prefix + key.upper())
        table = _table_of(field.annotation)
        if table is not None:
            names += _setting_variables(table, f"{prefix}{key.upper()}__")
    return names


def _unknown_variables(path: Path, raw: dict[str, Any]) -> None:
    """Refuse FEDGATE_* variables that set no key and that no fedgate process reads (only their names are
    printed: a value may be a secret)."""
    allowed = {name.upper() for name in _setting_variables()} | PROCESS_VARIABLES
    key_variable = _from_environment(("master_key_env",))
    master_key_env = os.environ[key_variable] if key_variable else raw.get("master_key_env")
    if isinstance(master_key_env, str):  # the process reads the master key from it
        allowed = allowed | {master_key_env.upper()}
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in sorted(allowed)}
    unknown: list[tuple[str, str | None]] = []
    for name in sorted(os.environ):
        # Read without regard to case, as the settings are: fedgate_site_id sets site_id.
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in allowed:
            near = difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), suffixes, n=1, cutoff=0.8)
            unknown.append((name, suffixes[near[0]] if near else None))
    if not unknown:
        return
    shape = "(FEDGATE_<KEY> sets a key, FEDGATE_<TABLE>__<KEY> a key of a table)"
    if len(unknown) == 1:
        name, near_name = unknown[0]
        hint = f"; did you mean {near_name}?" if near_name else f" {shape}"
        raise ConfigError(path, None, f"the environment variable {name} names no setting{hint}")
    names = ", ".join(
        f"{name} (did you mean {near_name}?)" if near_name else name for name, near_name in unknown
    )
    raise ConfigError(path, None, f"the environment variables {names} name no setting {shape}")


def _environment_sources(loc: tuple[str, ...], involved: tuple[tuple[str, ...], ...]) -> str:
    """' (set by the environment variable X; k set by the environment variable Y)' for the blamed key and
    the other keys of a check that the environment set; '' when the file set them all."""
    variable = _from_environment(loc)
    named = {variable} if variable else set()
    sources = [f"set by the environment variable {variable}"] if variable else []
    for other in involved:
        other_variable = _from_environment(other)
        if other_variable is not None and other_variable not in named:
            named.add(other_variable)
            key = other_variable[len(ENV_PREFIX) :].lower().replace("__", ".")  # the key it sets: peers
            sources.append(f"{key} set by the environment variable {other_variable}")
    return f" ({'; '.join(sources)})" if sources else ""


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
    _unknown_variables(path, raw)
    try:
        return SiteSettings(**_resolve(path.resolve().parent, raw))
    except SettingsError as exc:
        # An environment variable whose value is not the JSON its structured key needs (FEDGATE_PEERS).
        found = re.search(r'field "([A-Za-z0-9_]+)"', str(exc))
        variable = _from_environment((found[1],)) if found else None
        named = f"the environment variable {variable}" if variable else "an environment variable"
        raise ConfigError(path, None, f"{named} is not valid JSON for its key") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(str(p) for p in first["loc"])
        problem = (first.get("ctx") or {}).get("error")
        near: tuple[str, ...] | None = None
        involved: tuple[tuple[str, ...], ...] = ()
        if isinstance(problem, _KeyProblem):  # a check across keys, blamed on one of them
            loc, message, near, involved = problem.loc, problem.message, problem.near, problem.involved
        elif first["type"] == "extra_forbidden":
            message = "unknown key"
            if len(loc) > 1 and loc[-1] in SiteSettings.model_fields:
                # A line of the file's top level written after a table header: TOML puts it in the table.
                message += " (a top-level setting: put it before the first [table])"
        elif first["type"] == "missing":
            message = "required key is missing"
        else:
            message = first["msg"]
        key = ".".join(loc) or None
        line = None
        if key:
            message += _environment_sources(loc, involved)
            if _from_environment(loc) is not None:  # the file's line for the key, if any, is not in force
                raise ConfigError(path, key, message) from None
            parts = key.split(".")
            line = _line_at(text, loc) or _line_of(text, parts[-1]) or _line_of(text, parts[0])
            if near is not None and _line_at(text, loc) is None:
                # Not a line whose value the environment replaced: that line did not ask for the key.
                near_line = None if _from_environment(near) else _line_at(text, near)
                line = near_line or line
        raise ConfigError(path, key, message, line) from None


@lru_cache(maxsize=8)
def get_settings(path: str) -> SiteSettings:
    """Cached settings for the app's dependency providers; tests override through dependency_overrides."""
    return load_settings(path)

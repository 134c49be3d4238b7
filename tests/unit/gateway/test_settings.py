"""Site settings: TOML plus environment, and errors that name the file, key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import PROCESS_VARIABLES, ConfigError, load_settings

GOOD = """\
site_id = "site-de"
jurisdiction = "DE"
store_url = "duckdb:///store.duckdb"
audit_url = "sqlite:///audit.db"
policy_dir = "policies"
master_key_file = "keys/master.key"
log_key_file = "keys/log.key"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_and_resolves_relative_paths(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, GOOD))
    assert s.site_id == "site-de"
    assert s.jurisdiction == "DE"
    assert s.policy_dir == tmp_path / "policies"
    assert s.master_key_file == tmp_path / "keys/master.key"
    assert s.store_url == f"duckdb:///{tmp_path}/store.duckdb"
    assert s.audit_url == f"sqlite:///{tmp_path}/audit.db"
    assert s.audit_origin == "fedgate.example/site-de"


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGATE_JURISDICTION", "FR")
    assert load_settings(write(tmp_path, GOOD)).jurisdiction == "FR"


def test_unknown_key_names_key_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + 'stor_url = "x"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.key == "stor_url"
    assert err.value.line == 8
    assert str(path) in str(err.value) and "unknown key" in str(err.value)


def test_a_top_level_key_written_inside_a_table_says_where_it_belongs(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + '[server]\nport = 8080\nwitness_key_file = "keys/witness.key"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value) == (
        f"{path}:10: server.witness_key_file: unknown key (a top-level setting: put it before the first "
        "[table])"
    )
    # A key that is no setting at all, in a table, gets no such hint.
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, GOOD + "[server]\nprot = 8080\n"))
    assert str(err.value).endswith("server.prot: unknown key")


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith("audit_url"))
    with pytest.raises(ConfigError, match="audit_url: required key is missing") as err:
        load_settings(write(tmp_path, text))
    assert err.value.path.name == "site.toml"


def test_bad_country_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"site.toml:2: jurisdiction: .*'XX' is not an ISO 3166-1"):
        load_settings(write(tmp_path, GOOD.replace('"DE"', '"XX"')))


def test_exactly_one_master_key_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of master_key_file and master_key_env"):
        load_settings(write(tmp_path, GOOD + 'master_key_env = "FEDGATE_KEY"\n'))


def test_malformed_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "site_id = \n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.toml")


def test_oidc_and_server_tables(tmp_path: Path) -> None:
    text = (
        GOOD
        + '[oidc]\nissuer = "https://idp.example.org/realms/x/"\naudience = "site-de"\n'
        + "[server]\nport = 9001\n"
    )
    s = load_settings(write(tmp_path, text))
    assert s.oidc is not None and s.oidc.issuer == "https://idp.example.org/realms/x"
    assert s.oidc.algorithms == ("RS256", "ES256", "EdDSA")
    assert s.server.port == 9001 and s.server.is_loopback
    assert s.state_url == f"sqlite:///{tmp_path}/state.db"


def test_oidc_issuer_must_be_https_unless_loopback(tmp_path: Path) -> None:
    text = GOOD + '[oidc]\nissuer = "http://idp.example.org"\naudience = "a"\n'
    with pytest.raises(ConfigError, match=r"site.toml:9: oidc.issuer: .*https://") as err:
        load_settings(write(tmp_path, text))
    assert err.value.key == "oidc.issuer"
    ok = GOOD + '[oidc]\nissuer = "http://127.0.0.1:8999"\naudience = "a"\n'
    assert load_settings(write(tmp_path, ok)).oidc is not None


def test_oidc_algorithm_allow_list_rejects_hmac_and_none(tmp_path: Path) -> None:
    for alg in ("HS256", "none"):
        text = GOOD + f'[oidc]\nissuer = "https://idp"\naudience = "a"\nalgorithms = ["{alg}"]\n'
        with pytest.raises(ConfigError, match=r"oidc\.algorithms"):
            load_settings(write(tmp_path, text))


def test_nested_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGATE_SERVER__PORT", "9100")
    assert load_settings(write(tmp_path, GOOD)).server.port == 9100


PEER = '[[peers]]\nid = "site-fr"\nurl = "http://127.0.0.1:8102"\nrequest_key = "AAAA"\nlog_key = "x+1+A"\n'


def test_peers_registry(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, GOOD + 'peer_key_file = "keys/peer.key"\n' + PEER))
    (peer,) = s.peers
    assert peer.id == "site-fr" and peer.url == "http://127.0.0.1:8102"
    assert s.peer_key_file == tmp_path / "keys/peer.key"


def test_peers_need_a_signing_key_and_unique_ids(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="peer_key_file: required"):
        load_settings(write(tmp_path, GOOD + PEER))
    twice = GOOD + 'peer_key_file = "k"\n' + PEER + PEER
    with pytest.raises(ConfigError, match="unique"):
        load_settings(write(tmp_path, twice))
    remote = GOOD + 'peer_key_file = "k"\n' + PEER.replace("http://127.0.0.1:8102", "http://10.0.0.7")
    with pytest.raises(ConfigError, match=r"peers\.0\.url"):
        load_settings(write(tmp_path, remote))


def test_server_switch_interval_default_and_bounds(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, GOOD)).server.switch_interval_ms == 10.0
    configured = load_settings(write(tmp_path, GOOD + "[server]\nswitch_interval_ms = 2.5\n"))
    assert configured.server.switch_interval_ms == 2.5
    for bad in ("0.5", "101", '"fast"'):
        with pytest.raises(ConfigError, match=r"server\.switch_interval_ms"):
            load_settings(write(tmp_path, GOOD + f"[server]\nswitch_interval_ms = {bad}\n"))


def test_server_threads_default_and_bounds(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, GOOD)).server.threads == 2
    assert load_settings(write(tmp_path, GOOD + "[server]\nthreads = 12\n")).server.threads == 12
    with pytest.raises(ConfigError, match=r"server\.threads"):
        load_settings(write(tmp_path, GOOD + "[server]\nthreads = 0\n"))


def test_an_error_in_a_later_table_entry_names_its_own_line(tmp_path: Path) -> None:
    second = PEER.replace("site-fr", "site-nl").replace("http://127.0.0.1:8102", "ftp://example")
    path = write(tmp_path, GOOD + "\n[server]\nport = 8100\n\n" + PEER + "\n" + second)
    with pytest.raises(ConfigError, match=r"peers\.1\.url") as err:
        load_settings(path)
    lines = path.read_text().splitlines()
    assert err.value.line is not None and lines[err.value.line - 1] == 'url = "ftp://example"'


def test_a_bad_value_from_the_environment_is_blamed_on_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGATE_SERVER__PORT", "abc")
    path = write(tmp_path, GOOD + "\n[server]\nport = 8100\n")
    with pytest.raises(ConfigError, match="environment variable FEDGATE_SERVER__PORT") as err:
        load_settings(path)
    assert err.value.line is None and err.value.key == "server.port"


def test_an_environment_variable_in_lower_case_is_named_as_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("fedgate_server__port", "abc")
    with pytest.raises(ConfigError, match="environment variable fedgate_server__port"):
        load_settings(write(tmp_path, GOOD))


@pytest.mark.parametrize(("variable", "value"), [("FEDGATE_PEERS", "[{"), ("FEDGATE_SERVER", "{bad")])
def test_an_environment_variable_that_is_not_its_keys_json_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, GOOD))
    assert variable in str(caught.value) and "not valid JSON" in str(caught.value)


def test_checks_across_keys_name_the_key_and_its_line(tmp_path: Path) -> None:
    both = GOOD + 'master_key_env = "FEDGATE_TEST_KEY"\n'
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, both))
    assert (err.value.key, err.value.line) == ("master_key_file", 6)
    assert "set exactly one of master_key_file and master_key_env" in str(err.value)
    opa = GOOD + 'policy_engine = "opa"\n'
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, opa))
    assert (err.value.key, err.value.line) == ("opa_url", 8)  # the line that asks for OPA
    twice = GOOD + 'peer_key_file = "k"\n' + PEER + PEER
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, twice))
    assert (err.value.key, err.value.line) == ("peers.1.id", 15)  # the second [[peers]] table's id
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, GOOD + PEER))
    assert (err.value.key, err.value.line) == ("peer_key_file", 9)  # no such line: the first peer's


def test_public_url_must_be_a_web_url(tmp_path: Path) -> None:
    ok = load_settings(write(tmp_path, GOOD + '[server]\npublic_url = "https://gw.site-de.example/"\n'))
    assert ok.server.public_url == "https://gw.site-de.example"
    for bad in ("gw.site-de.example", "http://gw.site-de.example", "ftp://gw", "https://"):
        with pytest.raises(ConfigError) as err:
            load_settings(write(tmp_path, GOOD + f'[server]\npublic_url = "{bad}"\n'))
        assert (err.value.key, err.value.line) == ("server.public_url", 9)
        assert "https://" in str(err.value)


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("FEDGATE_STORE_ULR", "FEDGATE_STORE_URL"),
        ("FEDGATE_OIDC__ISSUR", "FEDGATE_OIDC__ISSUER"),
        ("FEDGATE_OIDC_ISSUER", "FEDGATE_OIDC__ISSUER"),
        ("fedgate_jurisdiktion", "FEDGATE_JURISDICTION"),
        ("FEDGATE_SERVER__PORT__NUMBER", None),
        ("FEDGATE_PEERS__0__ID", None),  # peers are a list: set whole, as JSON, by FEDGATE_PEERS
        ("FEDGATE_NOTHING_LIKE_A_KEY", None),
    ],
)
def test_an_environment_variable_that_names_no_setting_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, suggestion: str | None
) -> None:
    monkeypatch.setenv(variable, "s3cret-value")
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, GOOD))
    message = str(err.value)
    assert f"the environment variable {variable} names no setting" in message
    assert "s3cret-value" not in message  # a value may be a secret: only the name is printed
    if suggestion:
        assert message.endswith(f"did you mean {suggestion}?")
    else:
        assert "did you mean" not in message and "FEDGATE_<TABLE>__<KEY>" in message


def test_every_environment_variable_that_names_no_setting_is_named_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGATE_STORE_ULR", "x")
    monkeypatch.setenv("FEDGATE_ZZZ", "y")
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, GOOD))
    assert (
        "variables FEDGATE_STORE_ULR (did you mean FEDGATE_STORE_URL?), FEDGATE_ZZZ name no setting"
        in str(err.value)
    )


def test_variables_the_processes_read_are_not_mistaken_for_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.app import CONFIG_ENV
    from gateway.cli.workers import HANDOFF_ENV

    assert {CONFIG_ENV, HANDOFF_ENV} <= PROCESS_VARIABLES
    for variable in PROCESS_VARIABLES:
        monkeypatch.setenv(variable, "1")
    # The master key's own variable is read by the gateway, under whatever name the config gives it.
    without_file = GOOD.replace('master_key_file = "keys/master.key"\n', "")
    monkeypatch.setenv("FEDGATE_SITE_MASTER", "key material")
    s = load_settings(write(tmp_path, without_file + 'master_key_env = "FEDGATE_SITE_MASTER"\n'))
    assert s.master_key_env == "FEDGATE_SITE_MASTER"
    monkeypatch.setenv("FEDGATE_MASTER_KEY_ENV", "FEDGATE_OTHER_MASTER")
    monkeypatch.setenv("FEDGATE_OTHER_MASTER", "key material")
    monkeypatch.delenv("FEDGATE_SITE_MASTER")
    assert load_settings(write(tmp_path, without_file)).master_key_env == "FEDGATE_OTHER_MASTER"


PEERS_JSON = '[{"id": "site-fr", "url": "http://127.0.0.1:8102", "request_key": "AAAA", "log_key": "x+1+A"}]'


@pytest.mark.parametrize(
    ("variable", "value", "text", "key", "line", "named"),
    [
        # The file sets master_key_file on line 6; the environment the other source.
        ("FEDGATE_MASTER_KEY_ENV", "FEDGATE_TEST_KEY", GOOD, "master_key_file", 6, "master_key_env"),
        # The file's line 8 asks for the embedded engine: the environment asked for OPA.
        (
            "FEDGATE_POLICY_ENGINE",
            "opa",
            GOOD + 'policy_engine = "embedded"\n',
            "opa_url",
            None,
            "policy_engine",
        ),
        # The file's peer is fine; the environment renamed the site to the peer's id.
        ("FEDGATE_SITE_ID", "site-fr", GOOD + 'peer_key_file = "k"\n' + PEER, "peers.0.id", 10, "site_id"),
        ("FEDGATE_PEERS", PEERS_JSON, GOOD, "peer_key_file", None, "peers"),
        # The file's audit log (line 4) is SQLite; the environment's is not.
        ("FEDGATE_AUDIT_URL", "postgresql://db/audit", GOOD, "state_url", None, "audit_url"),
    ],
)
def test_checks_across_keys_name_the_environment_variables_that_set_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    text: str,
    key: str,
    line: int | None,
    named: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    assert (err.value.key, err.value.line) == (key, line)
    assert f"({named} set by the environment variable {variable})" in str(err.value)


def test_a_check_blamed_on_a_key_the_environment_set_names_each_variable_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGATE_SITE_ID", "site-fr")
    monkeypatch.setenv("FEDGATE_PEERS", PEERS_JSON)
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, GOOD + 'peer_key_file = "k"\n' + PEER))
    assert (err.value.key, err.value.line) == ("peers.0.id", None)
    assert str(err.value).endswith(
        "(set by the environment variable FEDGATE_PEERS; site_id set by the environment variable "
        "FEDGATE_SITE_ID)"
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://admin:S3cretPW@127.0.0.1:8181", "must not carry a user name or password"),
        ("http://S3cretPW@opa.internal:8181", "must not carry a user name or password"),
        ("https://opa.internal:8181/v1/data", "must not carry a path"),
        ("http://opa.internal:8181?token=S3cretPW", "must not carry a path"),
        ("http://opa.internal:99999", "port from 1 to 65535"),
        ("http://opa.internal:0", "port from 1 to 65535"),
        ("opa.internal:8181", "must be http(s)://host[:port]"),
        ("ftp://opa.internal", "must be http(s)://host[:port]"),
    ],
)
def test_a_malformed_opa_url_is_refused_without_repeating_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    text = GOOD + f'policy_engine = "opa"\nopa_url = "{url}"\n'
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    assert (err.value.key, err.value.line) == ("opa_url", 9)
    assert says in str(err.value)
    assert "S3cretPW" not in str(err.value)
    # Set from the environment, the message names the variable and keeps the value out too.
    monkeypatch.setenv("FEDGATE_OPA_URL", url)
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, GOOD + 'policy_engine = "opa"\n'))
    assert err.value.key == "opa_url" and "FEDGATE_OPA_URL" in str(err.value)
    assert "S3cretPW" not in str(err.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8181", "https://opa.internal", "http://opa:8181/"])
def test_an_opa_server_address_loads(tmp_path: Path, url: str) -> None:
    settings = load_settings(write(tmp_path, GOOD + f'policy_engine = "opa"\nopa_url = "{url}"\n'))
    assert settings.opa_url == url

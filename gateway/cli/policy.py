"""`fedgate policy …`: run the policy tests, explain a decision, list what ends soon, reload the folder.

Exit codes: 0 when all is well, 1 when the check found something (a policy test failed, a term has ended),
2 (`gateway.cli.output.EXIT_BAD_INPUT`) when it could not be made: a bad config, argument or input, a
policy folder that does not load, a store that cannot be read, an audit log or state database that cannot
record a reload. A monitor tells "something ended" from "could not look" by the code alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from audit.errors import AuditError
from audit.log import AuditLog
from gateway.catalog import CatalogView
from gateway.countries import is_country
from gateway.decision.bundle import load_bundle
from gateway.decision.errors import PolicyError
from gateway.decision.models import Decision, DecisionInput
from gateway.decision.point import PolicyDecisionPoint
from gateway.decision.rego_tests import format_report, run_policy_tests
from gateway.expiry import DEFAULT_WITHIN_DAYS, MAX_WITHIN_DAYS, Ending, expiring, listing, utc_today
from gateway.policy_admin import NotAnnounced, Reloaded, reload_folder
from gateway.query.errors import ExecutionError
from gateway.query.execute import store_engine
from gateway.runtime import STATE_FAILURES, STORE_FAILURES, recorded_bundle
from gateway.settings import ConfigError, SiteSettings, load_settings
from gateway.site_log import local_steward
from gateway.state import GatewayState
from pseudonymize.errors import StoreError

app = typer.Typer(help="Test policies, explain decisions, list what ends soon.", no_args_is_help=True)

_out = Console(highlight=False, soft_wrap=True, markup=False)  # messages quote paths and sources
_err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def _fail(message: str) -> typer.Exit:
    _err.print(f"error: {message}", markup=False)
    return typer.Exit(code=2)


@app.command("test")
def test(
    policy_dir: Annotated[Path, typer.Argument(help="policy folder")] = Path("policies"),
    coverage: Annotated[bool, typer.Option("--coverage", help="print the engine's coverage report")] = False,
    jurisdiction: Annotated[
        str, typer.Option(help="site jurisdiction the example data is loaded for")
    ] = "DE",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print failures and the summary only")] = False,
) -> None:
    """Run every test_* rule of every *_test.rego on the embedded engine; exit 1 when any fails."""
    if not is_country(jurisdiction):
        raise _fail(f"--jurisdiction: {jurisdiction!r} is not an ISO 3166-1 alpha-2 country code")
    try:
        report = run_policy_tests(policy_dir, jurisdiction, coverage=coverage)
    except PolicyError as exc:
        raise _fail(str(exc)) from None
    for line in format_report(report, verbose=not quiet):
        _out.print(line, markup=False)
    if coverage and report.coverage is not None:
        _out.print(report.coverage, markup=False)
    if not report.ok:
        raise typer.Exit(code=1)


def _read_input(path: Path) -> DecisionInput:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise _fail(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    except RecursionError:
        raise _fail(f"{path}: the JSON nests too deeply") from None
    try:
        return DecisionInput.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "input"
        raise _fail(f"{path}: {field}: {first['msg']}") from None


def _print_decision(decision: Decision) -> None:
    colour = {"allow": "green", "deny": "red", "needs_approval": "yellow"}[decision.decision]
    _out.print(Text.assemble("decision: ", (decision.decision, f"bold {colour}")))
    _out.print(f"bundle:   {decision.bundle_digest}", markup=False)
    _out.print("reasons:")
    for reason in decision.reasons:
        _out.print(f"  - {reason}", markup=False)
    _out.print("obligations:")
    if decision.obligations is None:
        _out.print("  none (denied)")
    else:
        text = json.dumps(decision.obligations.model_dump(mode="json"), indent=2)
        for line in text.splitlines():
            _out.print(f"  {line}", markup=False)


@app.command("explain")
def explain(
    config: Annotated[Path, typer.Option("--config", "-c", help="the site's TOML config")],
    input_file: Annotated[Path, typer.Option("--input", help="a decision input as JSON")],
    as_json: Annotated[bool, typer.Option("--json", help="print the decision as JSON")] = False,
) -> None:
    """Decide one request with the policies in the site's policy folder; print the decision, every reason
    and the obligations. The folder is evaluated on the embedded engine, also at a site whose gateway asks
    an OPA server (policy_engine = "opa"): explain never contacts that server, so a draft policy folder is
    explained without replacing what the running gateway's OPA decides with.
    """
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    request = _read_input(input_file)
    if settings.policy_engine != "embedded":
        _err.print("note: decided on the embedded engine; the site's OPA server was not asked", markup=False)
    try:
        # Both engines give the same answers on the same bundle; publishing the folder to the site's OPA
        # server would replace the policies the running gateway decides with.
        point = PolicyDecisionPoint(settings.model_copy(update={"policy_engine": "embedded"}))
    except PolicyError as exc:
        raise _fail(str(exc)) from None
    decision = point.decide(request)
    if as_json:
        _out.print(decision.model_dump_json(indent=2), markup=False)
    else:
        _print_decision(decision)


@app.command("expiring")
def expiring_terms(
    config: Annotated[Path, typer.Option("--config", "-c", help="the site's TOML config")],
    within_days: Annotated[
        int,
        typer.Option(
            "--within-days", min=0, max=MAX_WITHIN_DAYS, help="how many days ahead to look (0: ending today)"
        ),
    ] = DEFAULT_WITHIN_DAYS,
    as_json: Annotated[
        bool, typer.Option("--json", help="print JSON, as GET /v1/steward/expiring answers")
    ] = False,
) -> None:
    """List the agreements, export licences and datasets' time limits on use that have ended or end within
    --within-days days (UTC), from the site's policy folder and store. Exit 1 when one has ended or has no
    readable end (the policy denies on either), 0 otherwise; 2 when the config, folder or store is unusable.
    """
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    try:
        bundle = load_bundle(settings.policy_dir, settings.jurisdiction)
    except PolicyError as exc:
        raise _fail(str(exc)) from None
    try:
        # Read-only, as the gateway reads it: a DuckDB store a running gateway holds can be read so.
        entries = CatalogView(store_engine(settings.store_url, hold_open=False)).refresh()
    except (*STORE_FAILURES, StoreError, ExecutionError) as exc:
        cause = getattr(exc, "orig", None) or exc  # its message may quote the store's URL or path
        raise _fail(f"the site's store cannot be read ({type(cause).__name__})") from None
    today = utc_today()
    items = expiring(bundle.data, entries, today=today, within_days=within_days)
    if as_json:
        _out.print(json.dumps(listing(items, today, within_days), indent=2), markup=False)
    else:
        _print_expiring(items, today.isoformat(), within_days)
    if any(i.status != "ending" for i in items):
        raise typer.Exit(code=1)


def _print_expiring(items: list[Ending], today: str, within_days: int) -> None:
    if not items:
        _out.print(f"nothing has ended or ends within {within_days} days of {today} (UTC)", markup=False)
        return
    table = Table(title=f"ended or ending within {within_days} days of {today} (UTC)")
    # Ids are what a steward acts on: folded onto more lines in a narrow terminal (or none, under cron),
    # never cut short.
    for column in ("ends", "days left", "status", "kind", "id", "affects"):
        table.add_column(column, overflow="fold")
    invalid = [i for i in items if i.reason is not None]
    for i in items:
        cells = (i.ends or "-", "-" if i.days_left is None else str(i.days_left), i.status, i.kind, i.id)
        table.add_row(*(Text(c) for c in cells), Text(", ".join(i.affects)))
    _out.print(table)
    for i in invalid:
        _out.print(f"invalid: {i.reason}", markup=False)


CLI_RELOAD = "cli_reload"
"""The `change` of the `policy.changed` entry `fedgate policy reload` records."""


@app.command("reload")
def reload(
    config: Annotated[Path, typer.Option("--config", "-c", help="the site's TOML config")],
) -> None:
    """Put the site's policy folder as it is now (edited by hand) in force at the running gateway, which
    does not watch the folder. Under the lock a PUT of policy data holds, the folder's bundle is validated
    (an invalid one is named by file and field, exit 2: nothing recorded, the gateway keeps its last good
    bundle), recorded as a `policy.changed` of change `cli_reload` from the bundle last on record, and only
    then announced: every worker loads it before its next decision. A bundle already on record is not
    recorded again, only announced (which changes nothing), so a reload can always be run again.
    """
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    cannot = "the policy change cannot be recorded, so nothing was reloaded"
    try:
        log = AuditLog.open(settings.audit_url, settings.audit_origin, None, checkpoint_interval_s=None)
    except Exception as exc:  # noqa: BLE001 - a log that cannot be opened: one line, not a traceback
        raise _fail(f"{cannot}: the audit log cannot be opened ({type(exc).__name__})") from None
    try:
        try:
            state = GatewayState(settings.state_url)
        except STATE_FAILURES as exc:
            raise _fail(f"{cannot}: the state database cannot be opened ({type(exc).__name__})") from None
        try:
            done = _reload(settings, log, state, cannot)
        finally:
            state.close()
    finally:
        log.close()
    digest = done.bundle.digest
    if done.recorded:
        was = f"sha256:{done.previous}" if done.previous is not None else "none on record"
        _out.print(f"recorded policy.changed (cli_reload): sha256:{digest} (was {was})", markup=False)
    else:
        _out.print(f"sha256:{digest} is already on record: nothing recorded", markup=False)
    _out.print("announced: every worker of the running gateway loads it before its next decision")


class _NotRecorded(Exception):
    """The audit log or the state database did not take the change: nothing is on record or announced."""


def _reload(settings: SiteSettings, log: AuditLog, state: GatewayState, cannot: str) -> Reloaded:
    def recorded() -> str | None:
        # As a gateway's start reads it: the newest `policy.changed` of the log.
        try:
            return recorded_bundle(log, state)
        except (AuditError, *STATE_FAILURES) as exc:
            raise _NotRecorded(f"the last change on record cannot be read ({type(exc).__name__})") from None

    def record(logged: str | None, in_force: str) -> None:
        payload = {
            "bundle_digest": f"sha256:{in_force}",
            **({"previous_digest": f"sha256:{logged}"} if logged is not None else {}),
            "change": CLI_RELOAD,
        }
        try:
            state.policy_change_pending(log.size)  # nothing is appended should this fail
            receipt = log.append("policy.changed", actor=local_steward(settings), payload=payload)
        except (AuditError, *STATE_FAILURES) as exc:
            raise _NotRecorded(f"the audit log did not record it ({type(exc).__name__})") from None
        try:
            state.policy_change_noted(receipt.index, in_force)
        except STATE_FAILURES as exc:  # on record: the next start reads the log from the pending size
            _err.print(f"warning: the state database did not note the change ({type(exc).__name__})")

    try:
        return reload_folder(settings.policy_dir, settings.jurisdiction, recorded, record)
    except PolicyError as exc:
        raise _fail(f"{exc}; nothing was recorded, the running gateway keeps its bundle") from None
    except _NotRecorded as exc:
        raise _fail(f"{cannot}: {exc}; the running gateway keeps its bundle") from None
    except NotAnnounced as exc:
        on_record = "recorded, but " if exc.done.recorded else ""
        raise _fail(
            f"sha256:{exc.done.bundle.digest} was {on_record}not announced: {exc}; run it again"
        ) from None
    except OSError as exc:
        raise _fail(f"{settings.policy_dir}: cannot lock the policy folder ({exc.strerror or exc})") from None

"""The `fedgate` command: one thin typer app per area, each only parsing arguments and printing."""

from __future__ import annotations

import typer

from gateway.cli import audit, dev, peer, policy, serve, site, synth, witness

app = typer.Typer(
    name="fedgate",
    help="fedgate: a site's federated clinical data-sharing gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("synth")(synth.synth)
app.command("keygen")(site.keygen)
app.command("ingest")(site.ingest)
app.command("catalog")(site.catalog)
app.command("serve")(serve.serve)
app.command("dev-token")(dev.dev_token)
app.add_typer(policy.app, name="policy")
app.add_typer(audit.app, name="audit")
app.add_typer(peer.app, name="peer")
app.add_typer(witness.app, name="witness")


def main() -> None:
    """Console-script entry point."""
    app()

"""The site's own audit log, opened as the settings locate it, and the local actor of CLI work."""

from __future__ import annotations

import getpass
import re
from pathlib import Path

from audit import Actor
from audit.keys import load_log_key
from audit.log import AuditLog
from gateway.settings import SiteSettings


def open_site_log(settings: SiteSettings, *, checkpoint_interval_s: float | None = None) -> AuditLog:
    """Open the site's audit log with its signing key (LogKeyError when the key is missing)."""
    key = load_log_key(settings.log_key_file)
    if settings.audit_url.startswith("sqlite:///"):
        # A fresh site has no var/ folder yet; SQLite creates the file but not its folder.
        Path(settings.audit_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return AuditLog.open(
        settings.audit_url, settings.audit_origin, key, checkpoint_interval_s=checkpoint_interval_s
    )


def local_steward(settings: SiteSettings) -> Actor:
    """The operating-system user running a steward command, as the audit actor."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(sub=f"local:{re.sub(r'[^A-Za-z0-9._-]', '_', user)}", org=settings.site_id)

"""What the decision tests share: a private copy of the repository's policy folder, edited document by
document."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.decision import PolicyDecisionPoint
from gateway.settings import SiteSettings

POLICIES = Path(__file__).resolve().parents[3] / "policies"


def copy_policies(tmp_path: Path) -> Path:
    """The repository's policy folder copied under `tmp_path`."""
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def edit_data(folder: Path, name: str, change: Callable[[Any], object]) -> None:
    """Apply `change` to the parsed policy data document `name` of `folder` and write it back."""
    path = folder / "data" / f"{name}.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def decision_point(folder: Path, tmp_path: Path) -> PolicyDecisionPoint:
    """A decision point of a site whose policy folder is `folder` (its other settings unused)."""
    return PolicyDecisionPoint(
        SiteSettings(
            site_id="site-de",
            jurisdiction="DE",
            store_url="duckdb:///:memory:",
            audit_url="sqlite:///:memory:",
            policy_dir=folder,
            master_key_env="FEDGATE_TEST_UNUSED_KEY",
            log_key_file=tmp_path / "log.key",
        )
    )

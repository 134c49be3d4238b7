"""What the policy tests share: a private copy of the repository's policy folder, edited document by
document, and the settings of a site deciding with a given folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.decision import PolicyDecisionPoint
from gateway.settings import SiteSettings

POLICIES = Path(__file__).resolve().parents[1] / "policies"


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


def policy_settings(policy_dir: Path, tmp_path: Path, **more: Any) -> SiteSettings:
    """The settings of a site deciding with `policy_dir` (its store, log and keys unused); `more` sets
    other keys (an OPA engine's)."""
    return SiteSettings(
        site_id="site-de",
        jurisdiction="DE",
        store_url="duckdb:///:memory:",
        audit_url="sqlite:///:memory:",
        policy_dir=policy_dir,
        master_key_env="FEDGATE_TEST_UNUSED_KEY",
        log_key_file=tmp_path / "log.key",
        **more,
    )


def decision_point(policy_dir: Path, tmp_path: Path) -> PolicyDecisionPoint:
    """A decision point of a site whose policy folder is `policy_dir`."""
    return PolicyDecisionPoint(policy_settings(policy_dir, tmp_path))

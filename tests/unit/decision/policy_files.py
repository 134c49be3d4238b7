"""What the decision tests share: a private copy of the repository's policy folder, edited document by
document."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

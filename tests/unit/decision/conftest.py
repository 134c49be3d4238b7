from __future__ import annotations

from pathlib import Path

import pytest
from policy_helpers import copy_policies


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    """A private copy of the repository's policy folder."""
    return copy_policies(tmp_path)

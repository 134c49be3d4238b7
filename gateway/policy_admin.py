"""Stewards replace policy data (agreements, country lists, …) through the API: validated, atomic, audited.

A new document is checked as part of a whole bundle in a scratch copy of the policy folder first; only a
bundle that loads is written (to a temporary file, then renamed over the old one) and reloaded. On any
error the files and the running bundle stay as they were.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.decision import PolicyBundle, PolicyDecisionPoint, load_bundle
from gateway.decision.errors import PolicyDataError, PolicyLoadError, PolicySourceError
from gateway.query.spec import SAFE_INT

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class PolicyDataRejected(Exception):
    """A replacement document was refused; `field` names where inside it, when known."""

    def __init__(self, name: str, field: str | None, message: str) -> None:
        self.name = name
        self.field = field
        self.message = message
        super().__init__(f"{name}.json: {field}: {message}" if field else f"{name}.json: {message}")


class NoSuchDocument(KeyError):
    """There is no policy data document of that name."""


def data_names(policy_dir: Path) -> list[str]:
    """The policy data documents a steward may read and replace."""
    # A name starting with a dot is a replacement being written (`_write`), not a document.
    return sorted(p.stem for p in (policy_dir / "data").glob("*.json") if not p.name.startswith("."))


def read_data(policy_dir: Path, name: str) -> Any:
    """One policy data document, or NoSuchDocument when there is no such document."""
    if not _NAME.match(name) or name not in data_names(policy_dir):
        raise NoSuchDocument(name)
    return json.loads((policy_dir / "data" / f"{name}.json").read_text(encoding="utf-8"))


_REPLACING = threading.Lock()

Audit = Callable[[str, str], object]
"""Records a change of bundle (the digest before, the digest after) and returns once it is on record."""


def replace_data(
    point: PolicyDecisionPoint, policy_dir: Path, name: str, document: Any, *, audit: Audit | None = None
) -> tuple[str, PolicyBundle]:
    """Validate `document` as the new `<name>.json` within the whole bundle, then install and reload it;
    the previous bundle's digest and the new bundle.

    One replacement at a time: two documents validated each against the old other would otherwise be
    installed together without ever being checked together. With `audit`, the change is recorded before
    it takes effect, with the digest the validated bundle has (a bundle's digest does not depend on its
    folder): should `audit` fail, nothing has changed; should installing fail after it, the previous
    document is put back and the way back is recorded too."""
    if not _NAME.match(name) or name not in data_names(policy_dir):
        raise NoSuchDocument(name)
    with _REPLACING, _folder_lock(policy_dir):
        target = policy_dir / "data" / f"{name}.json"
        before, previous = point.bundle.digest, target.read_text(encoding="utf-8")
        text, trial = _validated(point, policy_dir, name, document)
        if audit is not None:
            audit(before, trial.digest)
        written = False
        try:
            _write(target, text)
            written = True
            # The site's other workers load the folder again before their next decision; this one now.
            point.changed()
            bundle = point.reload()
        except BaseException:
            # Back to the last good state, and the log told so: it holds the change announced above. The
            # way back is recorded whatever happens to the rollback (a full disk, an OPA server down).
            try:
                if written:
                    _write(target, previous)
                    point.changed()
                    point.reload()
            finally:
                if audit is not None:
                    audit(trial.digest, before)
            raise
        return before, bundle


@contextmanager
def _folder_lock(policy_dir: Path) -> Iterator[None]:
    """Hold the policy folder against replacements by the site's other processes (workers of `fedgate
    serve`): two replacements validated each against the other's old document would otherwise both land."""
    fd = os.open(policy_dir / "data" / ".replace.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _validated(
    point: PolicyDecisionPoint, policy_dir: Path, name: str, document: Any
) -> tuple[str, PolicyBundle]:
    """The new document's text and the bundle it makes, once that loads (PolicyDataRejected otherwise)."""
    try:
        text = json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # bytes, a lone surrogate, a circular structure
        raise PolicyDataRejected(name, None, f"the document is not JSON text: {exc}") from None
    try:
        where = _unhashable(document)
    except RecursionError:
        raise PolicyDataRejected(name, None, "the document nests too deeply") from None
    if where is not None:
        # The bundle's digest is of its documents' canonical JSON (RFC 8785), which holds neither.
        message = "a number must be finite, and an integer at most 2**53 - 1 in magnitude"
        raise PolicyDataRejected(name, where or None, message)
    with tempfile.TemporaryDirectory(prefix="fedgate-policy-") as scratch:
        trial = Path(scratch) / "policies"
        shutil.copytree(policy_dir, trial)
        (trial / "data" / f"{name}.json").write_text(text, encoding="utf-8")
        try:
            bundle = load_bundle(trial, point.bundle.site_jurisdiction)
        except PolicyDataError as exc:
            raise PolicyDataRejected(exc.path.stem, exc.field, exc.message) from None
        except PolicySourceError as exc:
            raise PolicyDataRejected(name, None, exc.message) from None
        except PolicyLoadError as exc:
            raise PolicyDataRejected(name, None, str(exc).replace(str(trial), "policies")) from None
        except Exception as exc:  # noqa: BLE001 - whatever keeps the bundle from loading refuses the document
            message = f"the policy bundle cannot be built with it ({type(exc).__name__})"
            raise PolicyDataRejected(name, None, message) from None
    return text, bundle


def _unhashable(value: Any, path: str = "") -> str | None:
    """The dotted place of the first number canonical JSON cannot hold (NaN, an infinity, an integer
    beyond 2**53 - 1), "" for the document itself; None when there is none."""
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unhashable(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _unhashable(item, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
    elif isinstance(value, float):
        return None if math.isfinite(value) else path
    elif isinstance(value, int) and not isinstance(value, bool):
        return None if abs(value) <= SAFE_INT else path
    return None


def _write(target: Path, text: str) -> None:
    """Put `text` in place of `target` atomically (a temporary file synced, then renamed over it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".json", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

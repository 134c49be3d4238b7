"""Stewards replace policy data (agreements, country lists, …) through the API: validated, atomic, audited.

A new document is checked as part of a whole bundle in a scratch copy of the policy folder first; only a
bundle that loads is written, to a temporary file beside the old one that no process loads (its name starts
with a dot). The change is recorded in the audit log, and only then is that file renamed over the old one
and every process of the site told to load the folder again. Should the record fail, the temporary file is
removed and the change refused: no process has seen it, so no process decides with it. Should the process
die between the record and the rename, the gateway's next start finds the bundle in force is not the one
last recorded and records it (`reconcile`). Either way no bundle decides a request before it is on record,
and the log holds every change made.

No process watches the folder: files edited by hand are put in force by `fedgate policy reload`
(`reload_folder`: validated, recorded, then announced the same way), a replacement of any document, or the
next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.events import Label
from gateway.decision import PolicyBundle, PolicyDecisionPoint, load_bundle
from gateway.decision.errors import PolicyDataError, PolicyLoadError, PolicySourceError
from gateway.decision.point import generation_marker, mark_generation
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


class BrokenOnDisk(Exception):
    """A policy data file in the folder does not load as it is (edited by hand, say): the running bundle
    stays the last good one, and no other document is replaced until the file is repaired (a replacement
    of that document itself repairs it, `replace_data`). `name` is the document's name, never its path."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        self.message = message
        super().__init__(f"{name}.json on disk: {message}")


class StaleVersion(Exception):
    """The bundle a replacement was based on (`If-Match`) is no longer the folder's: `current` is (None
    when a file of the folder does not load, so that it holds no bundle at all)."""

    def __init__(self, current: str | None) -> None:
        self.current = current
        now = f"the bundle is now {current}" if current is not None else "the folder no longer loads"
        super().__init__(f"the policy data changed since it was read; {now}")


class NotWritten(Exception):
    """The new document could not be written to disk (a full disk, say); nothing changed."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"{name}.json could not be written; the previous document stays in force")


def data_names(policy_dir: Path) -> list[str]:
    """The policy data documents a steward may read and replace."""
    # A name starting with a dot is a replacement being written (`_write`), not a document.
    return sorted(p.stem for p in (policy_dir / "data").glob("*.json") if not p.name.startswith("."))


def read_data(policy_dir: Path, name: str) -> Any:
    """One policy data document, or NoSuchDocument when there is no such document (BrokenOnDisk when its
    file is no JSON text)."""
    if not _NAME.match(name) or name not in data_names(policy_dir):
        raise NoSuchDocument(name)
    try:
        return json.loads((policy_dir / "data" / f"{name}.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BrokenOnDisk(name, f"the file is not valid JSON ({_where(exc)})") from None


def read_versioned(point: PolicyDecisionPoint, policy_dir: Path, name: str) -> tuple[Any, str | None]:
    """One policy data document and the digest of the bundle the folder holds with it, read together under
    the folder lock (None when another file keeps the folder from loading): the version a replacement
    names in `expected`."""
    with _folder_lock(policy_dir):
        document = read_data(policy_dir, name)
        try:
            digest: str | None = folder_digest(point, policy_dir)
        except BrokenOnDisk:  # the document is still readable; the folder has no version
            digest = None
        return document, digest


def folder_digest(point: PolicyDecisionPoint, policy_dir: Path) -> str:
    """The digest of the bundle the folder holds now, whichever process of the site wrote it (BrokenOnDisk
    when a file of it does not load). Call it under `_folder_lock`."""
    try:
        return load_bundle(policy_dir, point.bundle.site_jurisdiction).digest
    except PolicyDataError as exc:
        raise BrokenOnDisk(exc.path.stem, _on_disk(exc.message)) from None
    except PolicyLoadError as exc:
        raise BrokenOnDisk("policies", "the policy folder does not load as it is") from exc


def _on_disk(message: str) -> str:
    return f"the file in the policy folder is invalid: {message}"


def _where(exc: BaseException) -> str:
    return f"line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else type(exc).__name__


_REPLACING = threading.Lock()

Audit = Callable[[str, str], object]
"""Records a change of bundle (the digest before, the digest after) and returns once it is on record."""


def replace_data(
    point: PolicyDecisionPoint,
    policy_dir: Path,
    name: str,
    document: Any,
    *,
    audit: Audit | None = None,
    expected: frozenset[str] | None = None,
) -> tuple[str, PolicyBundle]:
    """Validate `document` as the new `<name>.json` within the whole bundle, then install and reload it;
    the previous bundle's digest and the new bundle.

    One replacement at a time, across the site's processes: two documents validated each against the old
    other would otherwise be installed together without ever being checked together. The previous bundle
    is the folder's as it is under the lock, whichever process wrote it last; with `expected` (the digests
    the caller accepts), a folder that holds another bundle is refused (StaleVersion), nothing changed.

    The new file is written under a temporary name no process loads, then the change recorded with
    `audit` (a bundle's digest does not depend on its folder), then the file renamed into place and the
    change announced: no process decides with a bundle that is not on record. Should `audit` fail, the
    temporary file is removed and nothing has changed; should installing or reloading fail after it, the
    old file is put back, announced, and the way back recorded too. A crash between the record and the
    rename is caught by the next start (`reconcile`).

    When `<name>.json` is the file that keeps the folder from loading (BrokenOnDisk otherwise: another
    file is), the replacement repairs it, provided the folder loads with it: the folder holds no bundle,
    so no `expected` matches (StaleVersion), and the change is recorded, and returned, from the bundle in
    force in this process, the last good one the site's workers decide with. Should installing fail, the
    broken file is put back and the way back recorded to that bundle, still in force."""
    if not _NAME.match(name) or name not in data_names(policy_dir):
        raise NoSuchDocument(name)
    with _REPLACING, _folder_lock(policy_dir):
        target = policy_dir / "data" / f"{name}.json"
        try:
            on_disk: str | None = folder_digest(point, policy_dir)
        except BrokenOnDisk as exc:
            if exc.name != name:
                raise
            on_disk = None  # the document to replace is the broken one: replacing it repairs the folder
        if expected is not None and on_disk not in expected:
            raise StaleVersion(on_disk)
        before = on_disk if on_disk is not None else point.bundle.digest
        # As bytes: a file broken by hand need not even be UTF-8, and a rollback puts back what it was.
        previous = target.read_bytes()
        text, trial = _validated(point, policy_dir, name, document)
        try:
            staged = _staged(target, text)
        except OSError:
            raise NotWritten(name) from None
        try:
            if audit is not None:
                # Nothing on record, so nothing in force: until the record is made, the new document is
                # only in a file no process loads (a reload for any reason finds the old one in place).
                audit(before, trial.digest)
            installed = False
            try:
                staged.replace(target)
                installed = True
                # The site's other workers load the folder again before their next decision; this one now.
                point.changed()
                bundle = point.reload()
            except BaseException as exc:
                # Back to the last good state, announced to every process, and the log told so: it holds
                # the change recorded above. The way back is recorded whatever happens to the rollback (a
                # full disk, an OPA server down).
                try:
                    _write(target, previous)
                    point.changed()
                    if on_disk is not None:  # a broken folder does not load: `before` stays in force
                        point.reload()
                finally:
                    if audit is not None:
                        audit(trial.digest, before)
                if not installed and isinstance(exc, OSError):
                    raise NotWritten(name) from None  # the old file never left: it stays in force
                raise
        finally:
            staged.unlink(missing_ok=True)
        return before, bundle


Recorded = Callable[[], str | None]
"""The digest (hex) of the bundle the newest policy change in the audit log put in force; None if none."""

Found = Callable[[str | None, str], object]
"""Records the bundle found in force at start-up, or put in force by `reload_folder` (the digest last
recorded, None for a log that recorded none; the digest in force) and returns once it is on record."""


def reconcile(point: PolicyDecisionPoint, policy_dir: Path, recorded: Recorded, audit: Found) -> str | None:
    """At start-up: when the bundle the folder holds is not the one the audit log last recorded (the
    process died between recording a replacement and putting it in place, or the files were changed by
    hand), or the log holds no policy change yet, record the bundle actually in force with
    `audit(logged, in_force)`: every log so says which bundle its site started under. The digest recorded
    so, or None when the log already agreed. Under the folder lock, so that the site's workers, starting
    together, record it once (each looking up the last one recorded after the other). A replacement's
    temporary file left by a process that died is removed (under the lock, no replacement is being
    written); one that cannot be is harmless, as no process loads it."""
    with _folder_lock(policy_dir):
        for leftover in (policy_dir / "data").glob(".*.json"):
            with suppress(OSError):
                leftover.unlink()
        logged = recorded()
        in_force = folder_digest(point, policy_dir)
        if in_force == logged:
            return None
        audit(logged, in_force)
        return in_force


@dataclass(frozen=True)
class Reloaded:
    """What `reload_folder` did: the bundle on record before (hex, None for a log that recorded none), the
    folder's bundle, and whether a change was recorded (False: the folder's bundle was already on record)."""

    previous: str | None
    bundle: PolicyBundle
    recorded: bool


class NotAnnounced(Exception):
    """`reload_folder` could not announce the bundle (the generation marker could not be written): what it
    did up to there is in `done`, and the site's processes decide with the bundles they held. Running it
    again announces it."""

    def __init__(self, done: Reloaded, cause: OSError) -> None:
        self.done = done
        super().__init__(f"the policy folder's change could not be announced ({cause.strerror or cause})")


def reload_folder(policy_dir: Path, jurisdiction: str, recorded: Recorded, audit: Found) -> Reloaded:
    """Put the policy folder as it is (edited by hand) in force at every process of the site: `fedgate
    policy reload`. Under the lock a replacement holds (`replace_data`), the folder's bundle is loaded and
    validated (PolicyLoadError, a PolicyDataError naming the file and field: nothing recorded, nothing
    announced, every process keeps the bundle it decides with); when it is not the one the audit log last
    recorded (`recorded`), the change is recorded with `audit(logged, in_force)`, and only then announced,
    so that no process decides with it before it is on record. A folder already on record is announced all
    the same: every process loads the bundle it already decides with again, which changes nothing, and a
    reload whose announcement failed can simply be run again."""
    with _REPLACING, _folder_lock(policy_dir):
        bundle = load_bundle(policy_dir, jurisdiction)
        logged = recorded()
        changed = logged != bundle.digest
        if changed:
            audit(logged, bundle.digest)
        try:
            mark_generation(generation_marker(policy_dir))
        except OSError as exc:
            raise NotAnnounced(Reloaded(logged, bundle, changed), exc) from exc
        return Reloaded(logged, bundle, changed)


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
        raise PolicyDataRejected(name, _shown_field(policy_dir, name, where, sent=document) or None, message)
    with tempfile.TemporaryDirectory(prefix="fedgate-policy-") as scratch:
        trial = Path(scratch) / "policies"
        shutil.copytree(policy_dir, trial)
        (trial / "data" / f"{name}.json").write_text(text, encoding="utf-8")
        try:
            bundle = load_bundle(trial, point.bundle.site_jurisdiction)
        except PolicyDataError as exc:
            unknown = exc.message == "unknown field"
            sent = _loaded(trial / "data" / f"{exc.path.stem}.json")
            field = _shown_field(policy_dir, exc.path.stem, exc.field, sent=sent, unknown=unknown)
            raise PolicyDataRejected(exc.path.stem, field, _shown_message(exc.message)) from None
        except PolicySourceError as exc:
            raise PolicyDataRejected(name, None, _shown_message(exc.message)) from None
        except PolicyLoadError as exc:
            message = _shown_message(str(exc).replace(str(trial), "policies"))
            raise PolicyDataRejected(name, None, message) from None
        except Exception as exc:  # noqa: BLE001 - whatever keeps the bundle from loading refuses the document
            message = f"the policy bundle cannot be built with it ({type(exc).__name__})"
            raise PolicyDataRejected(name, None, message) from None
    return text, bundle


# What a refusal may name of a document a steward sent: a key the folder's document already has at that
# place, a list index, or a field-shaped name the audit log would record; never a new key or a value that
# may be an identifier pasted by mistake (a record number, an e-mail address), which the answer and the
# refusal's audit entry would otherwise repeat. The place up to such a key is still named.
_FIELD_SHAPED = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# A value quoted as Python quotes it (`repr`): in single quotes, or in double quotes when it holds a single
# one, a backslash escaping a quote of the kind that encloses it.
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'" r'|"((?:[^"\\]|\\.)*)"')
HIDDEN_KEY = "(unknown key)"
HIDDEN_VALUE = "(a value)"


def _shown_field(
    policy_dir: Path, name: str, field: str | None, *, sent: Any, unknown: bool = False
) -> str | None:
    """The dotted place `field` in document `name` as `sent`, each key named only when it may be shown;
    with `unknown`, its last key is one the document's schema does not have."""
    if not field:
        return field
    on_disk = _loaded(policy_dir / "data" / f"{name}.json")
    parts, shown = field.split("."), []
    while parts:
        # A key may hold dots itself (an e-mail address): the longest one the document has is the key.
        width = next(
            (n for n in range(len(parts), 1, -1) if isinstance(sent, dict) and ".".join(parts[:n]) in sent), 1
        )
        part, parts = ".".join(parts[:width]), parts[width:]
        known = isinstance(on_disk, dict) and part in on_disk
        new_leaf = unknown and not parts
        if part.isdigit() or known or (not new_leaf and _harmless(part) and _FIELD_SHAPED.match(part)):
            shown.append(part)
        else:
            shown.append(HIDDEN_KEY)
            break  # what lies below a key not shown is named by that key's value, which is not shown
        on_disk, sent = _child(on_disk, part), _child(sent, part)
    return ".".join(shown)


def _loaded(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _child(value: Any, part: str) -> Any:
    if isinstance(value, dict):
        return value.get(part)
    if isinstance(value, list) and part.isdigit() and int(part) < len(value):
        return value[int(part)]
    return None


def _shown_message(message: str) -> str:
    """`message` with every quoted value that is not label-shaped, or may be an identifier, left out."""
    return _QUOTED.sub(lambda m: m.group(0) if _harmless(_inner(m)) else HIDDEN_VALUE, message)


def _inner(quoted: re.Match[str]) -> str:
    return quoted.group(1) if quoted.group(1) is not None else quoted.group(2)


def _harmless(text: str) -> bool:
    return Label().check(text) is None


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


def _staged(target: Path, text: str | bytes) -> Path:
    """`text` in a temporary file beside `target`, synced: renamed over `target`, it replaces it atomically.
    No process loads it before (its name starts with a dot, `data_names`)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".json", dir=target.parent)
    try:
        # The document keeps the mode the site gave it (mkstemp makes it 0600): who may read the policy
        # data is the site's choice, not a side effect of a steward's replacement.
        with contextlib.suppress(FileNotFoundError):
            os.fchmod(fd, stat.S_IMODE(target.stat().st_mode))
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8") if isinstance(text, str) else text)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _write(target: Path, text: str | bytes) -> None:
    """Put `text` in place of `target` atomically (a temporary file synced, then renamed over it)."""
    staged = _staged(target, text)
    try:
        staged.replace(target)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise

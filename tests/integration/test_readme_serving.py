"""The README's "Serving a site", run as written on the walkthrough's site: the gateway starts in dev mode,
says where it listens, answers the README's client example under the shipped example agreement, and a
steward can list the catalog but not ingest while it serves."""

from __future__ import annotations

import contextlib
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from gateway_site import free_port

ROOT = Path(__file__).resolve().parents[2]


def _sh_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", body, re.DOTALL)


def _fedgate(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _lines_until(process: subprocess.Popen[str], wanted: str, timeout_s: float) -> list[str]:
    """What `process` writes to stderr, line by line, until a line holds `wanted`, it exits or time is up."""
    assert process.stderr is not None
    stderr = process.stderr
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        with contextlib.suppress(ValueError, OSError):  # the pipe closed under it once the test is done
            for line in stderr:
                lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not any(wanted in line for line in seen) and time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=0.2).rstrip("\n"))
        except queue.Empty:
            if process.poll() is not None and lines.empty():
                break
    return seen


def _client_example_for_one_site() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Researchers: the Python client", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return block.group(1).split("with Federation(", 1)[0]


def test_the_walkthrough_site_serves_the_readme_client_example(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    # The walkthrough's steps up to its ingest, as written.
    walkthrough = [line for line in _sh_blocks("Walkthrough")[0].splitlines() if line.startswith("fedgate ")]
    for command in walkthrough[: [shlex.split(c)[1] for c in walkthrough].index("ingest") + 1]:
        args = shlex.split(command)[1:]
        args = args[: args.index(">")] if ">" in args else args
        done = _fedgate(tmp_path, env, *args)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    # "Serving a site": the dev-mode block, on a free port rather than the default 8080.
    (block,) = [b for b in _sh_blocks("Serving a site") if "dev-token" in b]
    lines = [shlex.split(line, comments=True) for line in block.splitlines()]
    for words in lines:
        if words[0] == "export":
            name, value = words[1].split("=", 1)
            env[name] = value
    serve = next(words for words in lines if words[:2] == ["fedgate", "serve"])
    dev_token = next(words for words in lines if words[:2] == ["fedgate", "dev-token"])
    assert serve[-1] == "&" and env.get("FEDGATE_DEV_MODE") == "true"
    port = free_port()
    env["FEDGATE_SERVER__PORT"] = str(port)
    config = tmp_path / "examples/site-de/site.toml"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", *serve[1:-1]],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        said = f"fedgate site-de serving on http://127.0.0.1:{port} (1 worker)"
        assert said in _lines_until(process, "serving on", timeout_s=60)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "the gateway did not start"
            time.sleep(0.2)
        issued = _fedgate(tmp_path, env, *dev_token[1:])
        assert issued.returncode == 0, issued.stderr
        code = _client_example_for_one_site().replace("https://fedgate.site-de.example", url)
        namespace: dict[str, object] = {"token": issued.stdout.strip(), "print": lambda *a, **k: None}
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
        table = namespace["table"]
        assert set(table.columns) >= {"age_band", "sex", "count"}  # type: ignore[attr-defined]
        assert table["count"].notna().any()  # type: ignore[index]
        # The gateway now holds the store: the catalog is read beside it, an ingest is refused, saying why.
        listed = _fedgate(tmp_path, env, "catalog", "--config", str(config))
        assert listed.returncode == 0 and "cohort" in listed.stdout, listed.stderr
        ingest = shlex.split(next(c for c in walkthrough if c.startswith("fedgate ingest")))[1:]
        refused = _fedgate(tmp_path, env, *ingest)
        message = " ".join(refused.stderr.split())
        assert refused.returncode == 1
        assert f"open in another process (a running `fedgate serve`? PID {process.pid})" in message
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()

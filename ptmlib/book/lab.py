"""`ptm lab`: JupyterLab at the repository root, on the project's environment.

A chapter (`chapters/<part>/<name>.md`, MyST markdown) opens as a notebook by default through jupytext's
"Jupytext Notebook" viewer, and every notebook whose kernelspec is `python3` (the chapters, the goldens,
the student notebooks of `ptm student`) runs on this environment's kernel, listed as "Python 3 (ptm
book)". Both are set in the environment (`sys.prefix`), idempotently, before the server starts:

- `{prefix}/share/jupyter/lab/settings/overrides.d/ptm-book.json`: JupyterLab's default viewers, and
  no news feed (a user's own `overrides.json` or settings still win);
- `{prefix}/share/jupyter/kernels/python3/kernel.json`: the kernel's display name (its name, and so the
  chapters' kernelspec, stays `python3`).

    with serve_lab(root) as (base, token):   # a server on loopback for tests, always shut down afterwards
        urllib.request.urlopen(f"{base}api/status?token={token}")
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping, NoReturn, Sequence

VIEWER = "Jupytext Notebook"  # the factory jupytext's JupyterLab extension registers
FILE_TYPES = ("markdown", "myst")  # `.md` is JupyterLab's "markdown" file type; jupytext adds "myst"
DOCMANAGER = "@jupyterlab/docmanager-extension:plugin"
NOTIFICATIONS = "@jupyterlab/apputils-extension:notification"
KERNEL_NAME = "python3"  # the kernelspec every chapter names
DISPLAY_NAME = "Python 3 (ptm book)"
OVERRIDES_FILE = Path("share/jupyter/lab/settings/overrides.d/ptm-book.json")
KERNEL_FILE = Path("share/jupyter/kernels") / KERNEL_NAME / "kernel.json"


def settings_overrides() -> dict[str, Any]:
    """JupyterLab setting overrides: `.md` files open with jupytext's notebook viewer by default, and no
    news feed is fetched (no pop-up asking about it; GPU machines are often offline)."""
    return {DOCMANAGER: {"defaultViewers": {t: VIEWER for t in FILE_TYPES}},
            NOTIFICATIONS: {"fetchNews": "false"}}


def kernel_spec(existing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The project's kernelspec: `existing` (or ipykernel's default for this Python) with its display name."""
    if existing is None:
        from ipykernel.kernelspec import get_kernel_dict

        existing = get_kernel_dict()
    return {**existing, "display_name": DISPLAY_NAME}


def write_json(path: Path, data: Mapping[str, Any]) -> bool:
    """Write `data` to `path` unless it already holds exactly that; atomic (a reader never sees half a file).

    Returns True when the file changed."""
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()) == json.loads(text):
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def configure(prefix: Path | None = None) -> list[Path]:
    """Set the environment under `prefix` (default `sys.prefix`) up for the book; returns the files changed.

    Writes the default-viewer overrides and renames the `python3` kernel's display name, keeping the rest
    of its kernelspec (its logos stay beside it). Running it again changes nothing."""
    prefix = Path(prefix or sys.prefix)
    changed = []
    if write_json(prefix / OVERRIDES_FILE, settings_overrides()):
        changed.append(prefix / OVERRIDES_FILE)
    spec_file = prefix / KERNEL_FILE
    try:
        existing = json.loads(spec_file.read_text())
    except (OSError, ValueError):
        existing = None
    if write_json(spec_file, kernel_spec(existing)):
        changed.append(spec_file)
    return changed


def lab_command(root: Path, *, port: int | None = None, ip: str | None = None, browser: bool = True,
                as_root: bool = False, extra: Sequence[str] = (), python: str | None = None) -> list[str]:
    """The command line that starts JupyterLab on this environment with `root` as its root folder.

    `as_root`: the user is root (a container), which Jupyter refuses without `--allow-root`."""
    cmd = [python or sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={Path(root).resolve()}"]
    if as_root:
        cmd.append("--allow-root")
    if port is not None:
        cmd.append(f"--port={port}")
    if ip is not None:
        cmd.append(f"--ip={ip}")
    if not browser:
        cmd.append("--no-browser")
    return cmd + list(extra)


def lab_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: the project's kernel and settings come before a user's own."""
    return {**(os.environ if environ is None else environ), "JUPYTER_PREFER_ENV_PATH": "1"}


def jupyterlab_installed() -> bool:
    """True when JupyterLab and jupytext's server extension are importable in this environment."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("jupyterlab", "jupyterlab_jupytext"))


def running_as_root() -> bool:
    """True for the superuser (as in many containers); False where there is no such notion."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def start(root: Path, *, port: int | None = None, ip: str | None = None, browser: bool = True) -> NoReturn:
    """Configure the environment, then replace this process by JupyterLab (Ctrl-C stops the server)."""
    configure()
    cmd = lab_command(root, port=port, ip=ip, browser=browser, as_root=running_as_root())
    print(f"JupyterLab in {root} on {sys.prefix}: chapters/*.md open as notebooks, kernel {DISPLAY_NAME!r}",
          flush=True)
    os.chdir(root)
    os.execve(cmd[0], cmd, lab_env())


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_status(base: str, token: str, proc: subprocess.Popen, timeout: float) -> None:
    """Poll `{base}api/status` until the server answers 200; RuntimeError in one line if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Jupyter server exited with status {proc.returncode} before answering {base}")
        try:
            with urllib.request.urlopen(f"{base}api/status?token={token}", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the Jupyter server did not answer {base}api/status within {timeout:.0f} s")


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """Stop the server and everything it started (its kernels share its process group): SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # kernels that outlived the server
    proc.wait()


@contextlib.contextmanager
def serve_lab(root: Path, *, token: str | None = None, timeout: float = 120.0, env: Mapping[str, str] | None = None,
              extra: Sequence[str] = ()) -> Iterator[tuple[str, str]]:
    """Run JupyterLab on 127.0.0.1 (a free port, no browser, fresh user settings and workspaces), as
    `ptm lab` runs it; yields (base URL ending in '/', token) once `/api/status` answers; always stops it.

    `extra`: more command-line options. The server's output goes to a log file whose last lines are added
    to a start-up failure."""
    token = token or secrets.token_hex(16)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ptm-lab-") as tmp:
        extra = [f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0",
                 f"--LabApp.user_settings_dir={tmp}/user-settings", f"--LabApp.workspaces_dir={tmp}/workspaces", *extra]
        cmd = lab_command(root, port=port, ip="127.0.0.1", browser=False, as_root=running_as_root(), extra=extra)
        server_env = {**lab_env(env), "JUPYTER_RUNTIME_DIR": f"{tmp}/runtime"}
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=root, env=server_env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{port}/"
        try:
            try:
                wait_for_status(base, token, proc, timeout)
            except RuntimeError as exc:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"{exc}; server log ends: {' | '.join(tail)}") from None
            yield base, token
        finally:
            stop(proc)

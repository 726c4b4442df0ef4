"""`ptm lab`: the environment set-up (unit tests), and a real Jupyter server on loopback that opens a
chapter as a notebook and runs its first cells on the book's kernel (slow)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from ptmlib.book import lab
from ptmlib.book.cli import main

CHAPTER = "chapters/icl/linear_regression.md"


# --- the set-up, without a server -----------------------------------------------------------------------

def test_settings_open_markdown_with_jupytexts_notebook_viewer():
    overrides = lab.settings_overrides()
    viewers = overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers == {"markdown": "Jupytext Notebook", "myst": "Jupytext Notebook"}
    assert overrides["@jupyterlab/apputils-extension:notification"] == {"fetchNews": "false"}
    # the viewer is the factory that the installed jupytext extension registers, under that name
    static = Path(sys.prefix) / "share/jupyter/labextensions/jupyterlab-jupytext/static"
    assert any(f'FACTORY="{lab.VIEWER}"' in p.read_text(errors="replace") for p in static.glob("*.js"))


def test_configure_writes_the_overrides_and_the_kernel_name_once(tmp_path):
    written = lab.configure(tmp_path)
    assert written == [tmp_path / lab.OVERRIDES_FILE, tmp_path / lab.KERNEL_FILE]
    assert json.loads((tmp_path / lab.OVERRIDES_FILE).read_text()) == lab.settings_overrides()
    spec = json.loads((tmp_path / lab.KERNEL_FILE).read_text())
    assert spec["display_name"] == "Python 3 (ptm book)" and spec["argv"][1:3] == ["-m", "ipykernel_launcher"]
    stamp = (tmp_path / lab.KERNEL_FILE).stat().st_mtime_ns
    assert lab.configure(tmp_path) == []  # idempotent: nothing rewritten
    assert (tmp_path / lab.KERNEL_FILE).stat().st_mtime_ns == stamp
    assert not list(tmp_path.rglob("*.tmp"))


def test_configure_keeps_the_rest_of_an_existing_kernelspec_and_a_users_overrides(tmp_path):
    spec_file, user = tmp_path / lab.KERNEL_FILE, tmp_path / "share/jupyter/lab/settings/overrides.json"
    for path, data in ((spec_file, {"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                    "display_name": "Python 3 (ipykernel)", "language": "python"}),
                       (user, {"@jupyterlab/apputils-extension:themes": {"theme": "JupyterLab Dark"}})):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    before = user.read_text()
    lab.configure(tmp_path)
    assert json.loads(spec_file.read_text()) == {"argv": ["python", "-m", "ipykernel_launcher", "-f",
                                                          "{connection_file}"],
                                                 "display_name": "Python 3 (ptm book)", "language": "python"}
    assert user.read_text() == before


def test_lab_command_passes_the_options_through(tmp_path):
    cmd = lab.lab_command(tmp_path, python="py")
    assert cmd == ["py", "-m", "jupyterlab", f"--ServerApp.root_dir={tmp_path.resolve()}"]
    cmd = lab.lab_command(tmp_path, port=8888, ip="0.0.0.0", browser=False, as_root=True, extra=["--x=1"], python="py")
    assert cmd[4:] == ["--allow-root", "--port=8888", "--ip=0.0.0.0", "--no-browser", "--x=1"]
    assert lab.lab_env({"A": "1"}) == {"A": "1", "JUPYTER_PREFER_ENV_PATH": "1"}


def test_the_environment_has_jupyterlab_and_jupytexts_extensions():
    assert lab.jupyterlab_installed()
    config = Path(sys.prefix) / "etc/jupyter/jupyter_server_config.d/jupytext.json"
    assert json.loads(config.read_text())["ServerApp"]["jpserver_extensions"]["jupyterlab_jupytext"] is True
    assert (Path(sys.prefix) / "share/jupyter/labextensions/jupyterlab-jupytext/package.json").is_file()


def test_ptm_lab_passes_its_options_to_the_server(monkeypatch, root):
    seen = {}

    def fake_start(where, **kw):
        seen.update(kw, root=where)
        raise SystemExit(0)

    monkeypatch.setattr(lab, "start", fake_start)
    with pytest.raises(SystemExit):
        main(["lab", "--no-browser", "--port", "8899", "--ip", "0.0.0.0"])
    assert seen == {"root": root, "port": 8899, "ip": "0.0.0.0", "browser": False}
    with pytest.raises(SystemExit):
        main(["lab"])
    assert seen == {"root": root, "port": None, "ip": None, "browser": True}


@pytest.mark.parametrize("argv, message", [(["lab", "--port", "70000"], "--port must be in 0..65535, got 70000"),
                                           (["lab", "--port", "abc"], "invalid int value: 'abc'"),
                                           (["lab", "--ip", " "], "--ip must not be empty"),
                                           (["lab", "--token", "x"], "unrecognized arguments: --token x")])
def test_ptm_lab_refuses_bad_options_in_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(lab, "start", lambda *a, **k: pytest.fail("started"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_ptm_lab_without_jupyterlab_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setattr(lab, "jupyterlab_installed", lambda: False)
    monkeypatch.setattr(lab, "start", lambda *a, **k: pytest.fail("started"))
    assert main(["lab"]) == 2
    assert "run `make install`" in capsys.readouterr().err


def test_waiting_for_a_server_that_exits_or_never_answers_fails_in_one_line():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(RuntimeError, match=r"exited with status 0 before answering"):
        lab.wait_for_status(f"http://127.0.0.1:{lab.free_port()}/", "t", dead, timeout=30)
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"did not answer http://127.0.0.1:\d+/api/status within 1 s"):
            lab.wait_for_status(f"http://127.0.0.1:{lab.free_port()}/", "t", silent, timeout=1)
        assert time.monotonic() - t0 < 10
    finally:
        silent.kill()
        silent.wait()


# --- a real server on loopback ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """JupyterLab as `ptm lab` runs it, on 127.0.0.1; the chapter's claims and cache go to a temporary folder."""
    import os

    from ptmlib.paths import repo_root

    tmp = tmp_path_factory.mktemp("lab")
    lab.configure()  # what `ptm lab` does first
    env = {**os.environ, "PTM_CLAIMS_DIR": str(tmp / "claims"), "PTM_CACHE": str(tmp / "cache")}
    with lab.serve_lab(repo_root(Path(__file__)), env=env) as (base, token):
        yield base, token


def _api(server, method: str, path: str, body: dict | None = None) -> dict:
    base, token = server
    sep = "&" if "?" in path else "?"
    req = urllib.request.Request(f"{base}api/{path}{sep}token={token}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        text = resp.read()
    return json.loads(text) if text else {}


def _execute(ws, code: str, timeout: float = 300) -> dict:
    """Run `code` on the kernel behind the websocket `ws`; returns its status, printed text and errors."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                                   "session": "test", "version": "5.3", "date": ""},
                        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                                    "allow_stdin": False, "stop_on_error": True}}))
    out = {"status": None, "text": "", "errors": [], "idle": False}
    deadline = time.monotonic() + timeout
    while not (out["status"] and out["idle"]):
        ws.settimeout(max(1.0, deadline - time.monotonic()))
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind == "stream":
            out["text"] += content["text"]
        elif kind == "error":
            out["errors"].append(f"{content['ename']}: {content['evalue']}")
        elif kind == "execute_reply":
            out["status"] = content["status"]
        elif kind == "status" and content["execution_state"] == "idle":
            out["idle"] = True
        if time.monotonic() > deadline:
            raise TimeoutError(f"no reply to {code[:40]!r} within {timeout} s")
    return out


@pytest.fixture(scope="module")
def student(server):
    """`ptm student icl/linear_regression`, written under the server's root as `_build/test-lab/student/...`."""
    from ptmlib.book.student import write_student
    from ptmlib.paths import repo_root

    root = repo_root(Path(__file__))
    (path,) = write_student(root, ["icl/linear_regression"], root / "_build" / "test-lab" / "student")
    return path.relative_to(root).as_posix()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["chapter", "student"])
def test_the_server_opens_a_chapter_as_a_notebook_on_the_book_kernel(server, student, which):
    path = CHAPTER if which == "chapter" else student
    model = _api(server, "GET", f"contents/{path}?type=notebook&content=1")
    assert model["type"] == "notebook" and model["content"]["nbformat"] == 4
    code = [c for c in model["content"]["cells"] if c["cell_type"] == "code"]
    assert len(code) > 5 and "parameters" in code[0]["metadata"]["tags"]
    assert model["content"]["metadata"]["kernelspec"]["name"] == lab.KERNEL_NAME
    specs = _api(server, "GET", "kernelspecs")
    assert specs["default"] == lab.KERNEL_NAME
    assert specs["kernelspecs"][lab.KERNEL_NAME]["spec"]["display_name"] == lab.DISPLAY_NAME
    base, token = server
    with urllib.request.urlopen(f"{base}lab/api/settings/@jupyterlab/docmanager-extension:plugin?token={token}") as r:
        viewers = json.loads(r.read())["schema"]["properties"]["defaultViewers"]["default"]
    assert viewers["markdown"] == lab.VIEWER


@pytest.mark.slow
@pytest.mark.parametrize("which", ["chapter", "student"])
def test_the_first_cells_run_with_a_tiny_budget_and_show_the_profile(server, student, which):
    import websocket

    path = CHAPTER if which == "chapter" else student
    cells = _api(server, "GET", f"contents/{path}?type=notebook&content=1")["content"]["cells"]
    code = [c["source"] for c in cells if c["cell_type"] == "code"]
    header = next(i for i, src in enumerate(code) if "ptm.chapter(globals(), KNOBS)" in src)
    session = _api(server, "POST", "sessions", {"path": path, "name": Path(path).name, "type": "notebook",
                                                "kernel": {"name": lab.KERNEL_NAME}})
    base, token = server
    ws = None
    try:
        ws = websocket.create_connection(
            f"{base.replace('http', 'ws', 1)}api/kernels/{session['kernel']['id']}/channels?token={token}", timeout=60)
        runs = [_execute(ws, src) for src in [code[0], 'budget = 0.01\nprofile = "smoke"', *code[1:header + 1]]]
        check = _execute(ws, "print(card.chapter, P.name, P.budget, P.lsa_steps)")
    finally:
        if ws is not None:
            ws.close()
        _api(server, "DELETE", f"sessions/{session['id']}")  # shuts the kernel down
    assert [(r["status"], r["errors"]) for r in runs] == [("ok", [])] * len(runs)
    profile_line = runs[-1]["text"]
    assert "profile=smoke" in profile_line and "budget=0.01" in profile_line, profile_line
    assert check["text"].split()[1:] == ["smoke", "0.01", "10"], check  # budget scales the training lengths
    if which == "chapter":  # the chapter id comes from the notebook's path, which the server gives the kernel
        assert check["text"].split()[0] == "icl/linear_regression", check
    assert not any(k["id"] == session["kernel"]["id"] for k in _api(server, "GET", "kernels"))


@pytest.mark.slow
def test_a_server_that_cannot_start_fails_in_one_line(tmp_path):
    with pytest.raises(RuntimeError, match=r"exited with status \d+ before answering .*; server log ends: ") as err:
        with lab.serve_lab(tmp_path, extra=[f"--ServerApp.root_dir={tmp_path / 'no-such-folder'}"]):
            pass
    assert "\n" not in str(err.value)

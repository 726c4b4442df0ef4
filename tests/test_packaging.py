"""The set-up files agree with each other: pins, entry points, CI."""
import re
import tomllib

import yaml


def _pins(lines):
    return {re.split(r"==", line)[0].lower(): line for line in lines if "==" in line}


def test_environment_yml_pins_match_pyproject(root):
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((root / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip) == wanted
    assert "python=3.11" in env["dependencies"]


def test_every_dependency_is_pinned(root):
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"] + project["optional-dependencies"]["test"]:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][\w.]*", dep), dep


def test_ci_runs_the_readme_test_command(root):
    readme = (root / "README.md").read_text()
    ci = (root / ".ci" / "run").read_text()
    assert "make test" in readme and "make book" in readme
    commands = [line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert commands[-1] == "make test" and any(c.startswith("export PTM_REQUIRE_BROWSER=1") for c in commands)
    assert all("apt-get" in c or c.startswith(("SUDO=", "command -v", "{", "export ")) for c in commands[:-1]), commands
    assert "chromium chromium-driver" in ci  # Debian's browser, not one a test tool downloads

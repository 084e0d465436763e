"""scripts/install-service renders a systemd user unit and a launchd plist that run `swarm-edge serve`."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install-service"


def test_systemd_unit_renders_and_verifies(tmp_path):
    out = subprocess.run([str(SCRIPT), "--print", "--", "--budget", "2GiB", "a b"], capture_output=True, text=True,
                         check=True).stdout
    assert f'ExecStart={REPO}/.venv/bin/swarm-edge serve --budget 2GiB "a b"' in out
    assert "KillSignal=SIGTERM" in out and "@" not in out.split("[Service]")[1].replace("%t", "")
    verify(tmp_path, out)


def verify(tmp_path, text):
    """systemd's own reading of a rendered unit: no error, and no warning about any of its lines."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "swarm-edge.service"
    unit.write_text(text)
    check = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert check.returncode == 0 and f"{unit}:" not in check.stderr, check.stderr


def checkout(tmp_path, name):
    """A copy of the script and its templates in a checkout at tmp_path/name, with a stand-in binary (/bin/true)."""
    root = tmp_path / name
    shutil.copytree(REPO / "scripts", root / "scripts")
    (root / ".venv" / "bin").mkdir(parents=True)
    shutil.copy("/bin/true", root / ".venv" / "bin" / "swarm-edge")
    return root


def test_unit_escapes_specifiers_and_quotes_arguments(tmp_path):
    """systemd.syntax(7): % is a specifier and $ a variable unless doubled; special words in double quotes."""
    args = ["--budget", "60%", "a b", 'say "hi"', "c:\\dir", "$HOME", ";", "it's", "", "%t"]
    out = subprocess.run([str(SCRIPT), "--print", "--", *args], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("ExecStart="))
    assert line == (f'ExecStart={REPO}/.venv/bin/swarm-edge serve --budget 60%% "a b" "say \\"hi\\"" "c:\\\\dir" '
                    '"$$HOME" ";" "it\'s" "" %%t')
    verify(tmp_path, out)


def test_unit_runs_a_checkout_whose_path_has_spaces_percent_and_dollar(tmp_path):
    root = checkout(tmp_path, "my repo 100% $HOME")
    out = subprocess.run([str(root / "scripts" / "install-service"), "--print", "--", "--budget", "50%"],
                         capture_output=True, text=True, check=True).stdout
    exec_start = f'ExecStart="{tmp_path}/my repo 100%% $HOME/.venv/bin/swarm-edge" serve --budget 50%%'
    assert exec_start in out.splitlines()  # the program's path is literal for $ (systemd.service(5))
    verify(tmp_path, out)  # systemd finds the executable at that path


@pytest.mark.parametrize("where, value, message", [
    ("arg", "2\nGiB", "contains a control character"), ("arg", "a\tb", "contains a control character"),
    ("path", 'it"s', "contains a quote or a backslash"), ("path", "back\\slash", "contains a quote or a backslash"),
    ("path", "new\nline", "contains a control character"),
])
def test_values_a_unit_cannot_carry_are_refused(tmp_path, where, value, message):
    script = checkout(tmp_path, value if where == "path" else "repo") / "scripts" / "install-service"
    out = subprocess.run([str(script), "--print", "--", "--budget", value if where == "arg" else "2GiB"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and message in out.stderr and out.stdout == ""


def test_a_refused_value_installs_nothing(tmp_path):
    """Install mode with a stand-in systemctl on PATH (it only records its calls): nothing written, nothing run."""
    root = checkout(tmp_path, "repo")
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/systemctl.calls\n')
    (fake_bin / "systemctl").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "HOME": str(tmp_path / "home"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    out = subprocess.run([str(root / "scripts" / "install-service"), "--", "--budget", "1\n2"], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "control character" in out.stderr and "installed" not in out.stdout
    assert not (tmp_path / "systemctl.calls").exists()
    assert list((tmp_path / "config" / "systemd" / "user").iterdir()) == []


def test_launchd_plist_renders_valid_xml():
    code = ('source <(sed -n "/^render()/,/^render_plist/p" scripts/install-service); '
            'repo="$PWD"; bin=/opt/se/bin/swarm-edge; HOME=/Users/ada; args=(--budget 2GiB "a<b&c"); render_plist')
    out = subprocess.run(["bash", "-c", code], cwd=REPO, capture_output=True, check=True).stdout
    plist = plistlib.loads(out)
    assert plist["ProgramArguments"] == ["/opt/se/bin/swarm-edge", "serve", "--budget", "2GiB", "a<b&c"]
    assert plist["StandardErrorPath"] == "/Users/ada/Library/Logs/swarm-edge.log" and plist["RunAtLoad"] is True


def test_bad_option_is_a_clear_error():
    out = subprocess.run([str(SCRIPT), "--frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown option --frobnicate" in out.stderr

"""scripts/install-service renders a systemd user unit and a launchd plist that run `swarm-edge serve`."""

from __future__ import annotations

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
    assert f"ExecStart={REPO}/.venv/bin/swarm-edge serve --budget 2GiB 'a b'" in out
    assert "KillSignal=SIGTERM" in out and "@" not in out.split("[Service]")[1].replace("%t", "")
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "swarm-edge.service"
    unit.write_text(out)
    check = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


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

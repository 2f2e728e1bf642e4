"""Production packaging: the systemd unit `pillarbox service install` writes is accepted by
systemd's own checker, sandboxes the way the docs say, and the wheel builds without a
single setuptools warning."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import pbserver


def pillarbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pillarbox", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def unit(tmp_path: Path) -> tuple[Path, Path]:
    settings = pbserver.make_settings(tmp_path / "data", {})
    assert settings.source is not None
    target = tmp_path / "pillarbox.service"
    result = pillarbox(
        "--config", str(settings.source), "service", "install", "--output", str(target)
    )
    assert result.returncode == 0, result.stderr
    return target, settings.data_dir


def directives(unit_file: Path) -> dict[str, str]:
    out = {}
    for line in unit_file.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value
    return out


def test_systemd_analyze_verify_accepts_the_unit(unit: tuple[Path, Path]) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit[0])], capture_output=True, text=True, timeout=60
    )
    # verify prints every unknown key, bad value or missing program, and fails on some.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_unit_is_sandboxed_to_the_data_dir(unit: tuple[Path, Path]) -> None:
    unit_file, data_dir = unit
    found = directives(unit_file)
    assert found["User"] == "pillarbox" and found["ReadWritePaths"] == str(data_dir.resolve())
    assert found["AmbientCapabilities"] == found["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    for key, value in {
        "ProtectSystem": "strict", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
        "ProtectHome": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }.items():  # fmt: skip
        assert found[key] == value, key
    # ExecStart starts this very installation with the config it was written for.
    command = shlex.split(found["ExecStart"])
    assert Path(command[0]).exists() and command[-1] == "serve" and "--config" in command


def test_unit_to_stdout_and_clear_error_without_root(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data", {})
    assert settings.source is not None
    printed = pillarbox("--config", str(settings.source), "service", "install", "--output", "-")
    assert printed.returncode == 0 and "[Service]" in printed.stdout
    help_text = pillarbox("service", "install", "--help")
    assert "systemd" in help_text.stdout and "--no-create-user" in help_text.stdout


def test_wheel_builds_without_warnings(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(root)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "Warning" not in output and "deprecated" not in output.lower(), output
    assert list(tmp_path.glob("pillarbox-*.whl"))

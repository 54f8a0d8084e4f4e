"""The Dockerfile: hadolint finds nothing, and the shape the chart relies on holds. No Docker
engine here, so the image itself is not built."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from conftest import ROOT, gateway_binary, tool

DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_is_clean():
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_every_ignore_carries_a_reason():
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            # The reason is on the same line after the codes, or on the comment line above.
            same_line = re.search(r"ignore=\S+\s+\S", line)
            above = i > 0 and lines[i - 1].lstrip().startswith("#")
            assert same_line or above, f"line {i + 1}: hadolint ignore without a reason"


def test_shape():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert stages[0].startswith("rust:1.95-bookworm")
    assert stages[-1].startswith("gcr.io/distroless/cc-debian12")
    assert "cargo build --locked --release" in text
    assert re.search(r"^USER\s+65532:65532$", text, re.M), "non-root, the uid the chart runs as"
    assert re.search(r"^EXPOSE\s+8080\s+9090$", text, re.M)
    assert re.search(r"^HEALTHCHECK\s+NONE$", text, re.M)
    copied = re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M)
    # .dockerignore must not hide what the image copies.
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    assert "target" in ignored, "the build context leaves out cargo's target dir"
    for line in copied:
        for source in line.split()[:-1]:
            assert not any(source == i or source.startswith(i + "/") for i in ignored), source


def test_image_fallback_config_is_accepted(tmp_path):
    """The configuration baked into the image, with its volume paths moved to a temporary dir."""
    config = yaml.safe_load((ROOT / "deploy/container/config.yaml").read_text())
    assert config["lifecycle"]["runtime_dir"] == "/run/mtls-gateway"
    assert config["store"]["path"].startswith("/var/lib/mtls-gateway/")
    binary = gateway_binary()
    if binary is None:
        pytest.skip("no target/*/mtls-gateway: `make test` builds it before these tests")
    config["lifecycle"]["runtime_dir"] = str(tmp_path / "run")
    config["store"]["path"] = str(tmp_path / "store")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(binary), "check", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr

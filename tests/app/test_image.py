"""The gateway image: hadolint-clean, multi-stage, non-root, pinned, with a health check."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from app.devstack import ROOT

DOCKERFILE = ROOT / "images/gateway/Dockerfile"
REQUIREMENTS = ROOT / "images/gateway/requirements.txt"


def test_hadolint_is_clean():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_non_root_pinned_with_healthcheck():
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and not users[-1].startswith(("0", "root"))
    assert re.search(r"^HEALTHCHECK .*\n?.*app\.gateway\.healthcheck", text, re.M)
    assert "--require-hashes" in text


def test_image_packages_match_the_lock_file():
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"] if "version" in p}
    pinned = dict(re.findall(r"^([a-z0-9._-]+)==(\S+)", REQUIREMENTS.read_text(), re.M))
    assert {"fastapi", "uvicorn", "uvloop", "httptools", "aiohttp", "redis", "orjson"} <= pinned.keys()
    assert {name: locked.get(name) for name in pinned} == pinned


def test_gateway_code_stands_alone_in_the_image():
    # The image copies app/gateway only: it must not import the simulator, devstack or infra.
    for path in (ROOT / "app/gateway").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith(("app.simulator", "app.devstack", "infra")), path
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                raise AssertionError(f"{path} imports from outside app/gateway")

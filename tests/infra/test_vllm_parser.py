"""Every rendered `vllm serve` command, parsed by the argument parser of the pinned image's vLLM.

Not a list of flags written here: vllm==0.33.0's own make_arg_parser (tools/vllm/parse_serve_args.py,
`make vllm-args`), so a flag that release does not know, a bad choice or a malformed value fails.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from infra.catalog import vllm_cli
from infra.plan.scheduling import pods
from tests.infra.conftest import REPO, SHIPPED

PYTHON = REPO / ".venv-vllm" / "bin" / "python"
RELEASE = REPO / ".vllm-args"
SCRIPT = REPO / "tools" / "vllm" / "parse_serve_args.py"


def parse(argvs: list[list[str]], tmp_path) -> tuple[str, list[str | None]]:
    if not (RELEASE / ".synced").exists():
        pytest.fail("no vLLM release for the parser: run `make vllm-args` (make test does)")
    src, dst = tmp_path / "argv.json", tmp_path / "errors.json"
    src.write_text(json.dumps(argvs))
    env = {"PYTHONPATH": str(RELEASE), "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([str(PYTHON), str(SCRIPT), str(src), str(dst)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(dst.read_text())
    return out["version"], out["errors"]


def _serve_args(graphs) -> list[list[str]]:
    argvs = []
    for stack in SHIPPED:
        for pod in pods(graphs[stack]):
            for c in pod.spec["containers"]:
                if c["name"] == "vllm":
                    assert c["command"] == ["vllm", "serve"]
                    argvs.append(c["args"])
    assert argvs
    return argvs


def test_every_shipped_vllm_command_parses_with_the_pinned_release(graphs, tmp_path):
    argvs = _serve_args(graphs)
    # The parser must be the image's release, and must refuse what it does not know (the
    # negative controls ride along in the same run: one start of vLLM's imports).
    controls = [argvs[0] + ["--no-such-flag"], argvs[0] + ["--max-model-len", "lots"]]
    version, errors = parse(argvs + controls, tmp_path)
    assert version == vllm_cli().version
    assert errors[: len(argvs)] == [None] * len(argvs), [(a, e) for a, e in zip(argvs, errors) if e]
    assert "unrecognized arguments: --no-such-flag" in errors[-2]
    assert errors[-1] is not None and "max-model-len" in errors[-1]

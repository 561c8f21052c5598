"""images/vllm: the pinned upstream image, run as its own user, every cache on a mounted volume.

Checked against the things themselves where they run here: hadolint; vLLM 0.33.0's own
vllm/envs.py, huggingface_hub and Triton read the image's environment (so a misspelt variable
fails); the rendered pods mount every path it writes to. Checkov runs over it with the other
Dockerfiles (tests/policy/test_checkov.py).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from infra.catalog import vllm_image_user
from infra.config import Images
from infra.workloads.vllm_args import PORT
from tests.stacks import REPO, SHIPPED

DOCKERFILE = REPO / "images/vllm/Dockerfile"
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
RELEASE = REPO / ".vllm-args"
# Variables that name a directory something writes to.
WRITTEN_PATHS = ("HOME", "HF_HOME", "XDG_CACHE_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        word, _, rest = whole.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def image_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions(text):
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
    return env


def one(text: str, word: str) -> str:
    found = [rest for w, rest in instructions(text) if w == word]
    assert len(found) == 1, f"{word}: {found}"
    return found[0]


def test_hadolint_is_clean_and_can_fail(tmp_path):
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # Control: the same file ending as root is refused (DL3002).
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text() + "USER root\n")
    done = subprocess.run([str(hadolint), str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3002" in done.stdout


def test_it_builds_on_the_pinned_upstream_image_as_its_user():
    text = DOCKERFILE.read_text()
    user = vllm_image_user()
    default = re.search(r"^ARG VLLM_IMAGE=(\S+)$", text, re.M)
    assert default and default.group(1) == f"{user.image}:{user.version}" == Images().vllm
    assert one(text, "FROM") == "${VLLM_IMAGE}"
    assert one(text, "USER") == f"{user.uid}:{user.gid}"
    # Metadata only: nothing runs on (or unpacks) the base, so building it costs no download.
    assert not [w for w, _ in instructions(text) if w in ("RUN", "COPY", "ADD")]


def test_health_check_and_entrypoint_match_the_pods():
    text = DOCKERFILE.read_text()
    assert f"http://127.0.0.1:{PORT}/health" in one(text, "HEALTHCHECK")
    assert json.loads(one(text, "ENTRYPOINT")) == ["vllm", "serve"]
    assert one(text, "EXPOSE") == str(PORT)


def unmounted_paths(graph, env: dict[str, str]) -> list[str]:
    """Paths the image writes to (its environment, and the command's --download-dir) that
    lie under no volume of a vLLM container: with a read-only root file system, vLLM fails there."""
    problems = []
    for r in graph.of_type("kubernetes:apps/v1:Deployment"):
        spec = r.inputs["spec"]["template"]["spec"]
        for c in spec["containers"]:
            if c["name"] != "vllm":
                continue
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = [m["mountPath"].rstrip("/") for m in c["volumeMounts"]]
            args = c["args"]
            paths = {name: env[name] for name in WRITTEN_PATHS}
            paths["--download-dir"] = args[args.index("--download-dir") + 1]
            for name, path in paths.items():
                if not any(path == m or path.startswith(m + "/") for m in mounts):
                    problems.append(f"{r.name}: {name}={path} is on the read-only root file system")
    return problems


@pytest.mark.parametrize("stack", SHIPPED)
def test_every_path_the_image_writes_is_a_mounted_volume(graphs, stack):
    assert unmounted_paths(graphs[stack], image_env(DOCKERFILE.read_text())) == []


def test_an_unmounted_cache_is_caught(graphs):
    graph = copy.deepcopy(graphs["dev"])
    env = image_env(DOCKERFILE.read_text())
    for r in graph.of_type("kubernetes:apps/v1:Deployment"):
        for c in r.inputs["spec"]["template"]["spec"]["containers"]:
            if c["name"] == "vllm":
                c["volumeMounts"] = [m for m in c["volumeMounts"] if m["mountPath"] != "/tmp"]
    assert any("HOME=/tmp" in p for p in unmounted_paths(graph, env))


PROBE = """
import getpass, json, os
import vllm.envs as envs
import huggingface_hub.constants as hf
import triton.knobs as knobs
print(json.dumps({
    "vllm_cache_root": envs.VLLM_CACHE_ROOT,
    "no_usage_stats": envs.VLLM_NO_USAGE_STATS,
    "do_not_track": envs.VLLM_DO_NOT_TRACK,
    "hf_hub_cache": hf.HF_HUB_CACHE,
    "triton_cache": knobs.cache.dir,
    "home": os.path.expanduser("~"),
    "user": getpass.getuser(),
}))
"""


def read_by_vllm(env: dict[str, str]) -> dict:
    """What the pinned vLLM release (and the libraries it uses) make of `env`."""
    if not (RELEASE / ".synced").exists():
        pytest.fail("no vLLM release: run `make vllm-args` (make test does)")
    done = subprocess.run(
        [str(VLLM_PYTHON), "-c", PROBE],
        env={**env, "PYTHONPATH": str(RELEASE), "VLLM_TARGET_DEVICE": "cpu", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_vllm_reads_the_images_environment():
    env = image_env(DOCKERFILE.read_text())
    seen = read_by_vllm(env)
    assert seen == {
        "vllm_cache_root": "/models/cache/vllm",
        "no_usage_stats": True,
        "do_not_track": True,
        "hf_hub_cache": "/models/hf/hub",
        "triton_cache": "/models/cache/triton",
        "home": "/tmp",
        "user": vllm_image_user().user,
    }
    # Control: a misspelt name leaves vLLM on its default under HOME.
    misspelt = {("VLLM_CACHE_DIR" if k == "VLLM_CACHE_ROOT" else k): v for k, v in env.items()}
    misspelt.pop("XDG_CACHE_HOME")
    assert read_by_vllm(misspelt)["vllm_cache_root"] == "/tmp/.cache/vllm"

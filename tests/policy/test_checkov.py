"""Checkov over the Kubernetes manifests of every shipped stack and over images/*/Dockerfile.

Checkov lives in its own environment (.venv-checkov, built by `make test` from
tools/checkov/requirements.lock) because it pins a boto3 the project's environment cannot
share. Skipped checks come from policy/checkov-skips.yaml, each with its reason; nothing
else turns a check off.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from infra.plan import report
from infra.plan.run import record_stack, stack_names

REPO = Path(__file__).resolve().parents[2]
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
SKIPS_FILE = REPO / "policy" / "checkov-skips.yaml"
DOCKERFILES = sorted(REPO.glob("images/*/Dockerfile"))
CHECK_ID = re.compile(r"^CKV2?_[A-Z0-9]+_\d+$")
# Offline: no Prisma Cloud mappings, guidelines or version check.
BASE_ARGS = ["--skip-download", "-o", "json", "--quiet", "--compact"]

needs_checkov = pytest.mark.skipif(
    not CHECKOV.exists(), reason=f"{CHECKOV.relative_to(REPO)} is not built; `make test` builds it"
)


def load_skips() -> list[dict]:
    doc = yaml.safe_load(SKIPS_FILE.read_text()) or {}
    return list(doc.get("skips") or [])


def skip_ids() -> list[str]:
    return [str(s.get("id")) for s in load_skips()]


class Run:
    """One checkov process, started now and read when a test needs its result."""

    def __init__(self, *args: str | Path):
        self.argv = [str(CHECKOV), *map(str, args)]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self._out: tuple[str, str] | None = None

    def output(self) -> str:
        if self._out is None:
            self._out = self.proc.communicate(timeout=300)
        out, err = self._out
        if self.proc.returncode not in (0, 1):  # 1: some check failed
            pytest.fail(f"{' '.join(self.argv)} exited {self.proc.returncode}:\n{err[-4000:]}")
        return out

    def reports(self) -> list[dict]:
        """Each framework's report; checkov prints one object, a list, or several in a row."""
        text, found, decoder, i = self.output(), [], json.JSONDecoder(), 0
        while True:
            while i < len(text) and text[i].isspace():
                i += 1
            if i >= len(text):
                return found
            obj, i = decoder.raw_decode(text, i)
            found.extend(obj if isinstance(obj, list) else [obj])

    def failed(self) -> list[dict]:
        return [c for r in self.reports() for c in (r.get("results") or {}).get("failed_checks", [])]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def listing(failed: list[dict], where: Path, shown_as: str) -> str:
    lines = []
    for c in sorted(failed, key=lambda c: (c["file_path"], c["check_id"])):
        path = Path(c.get("file_abs_path") or c["file_path"])
        try:
            path = Path(shown_as) / path.relative_to(where)
        except ValueError:
            pass
        resource = c["resource"] if len(c["resource"]) <= 60 else c["resource"][:57] + "..."
        lines.append(f"  {c['check_id']} {c['check_name']!r}: {resource} in {path}")
    return "\n".join(lines)


BAD_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "bad", "namespace": "llm"},
    "spec": {"containers": [{"name": "bad", "image": "busybox:1.36", "securityContext": {"privileged": True}}]},
}
BAD_DOCKERFILE = 'FROM python:latest\nUSER root\nCMD ["python"]\n'


@pytest.fixture(scope="module")
def checkov(request, tmp_path_factory):
    """Every checkov run of this module, each started as soon as its input exists.

    Each site's manifests are scanned on their own: a site is its own cluster, and
    Checkov's graph checks (a pod no NetworkPolicy selects, ...) must not count one site's
    objects for another's.
    """
    runs: dict[str, Run] = {}
    skip = ["--skip-check", ",".join(skip_ids())]
    try:
        bad = tmp_path_factory.mktemp("checkov-bad")
        (bad / "pod.yaml").write_text(yaml.safe_dump(BAD_POD))
        (bad / "Dockerfile").write_text(BAD_DOCKERFILE)
        runs["list"] = Run("--skip-download", "--list", "--framework", "kubernetes", "dockerfile")
        runs["bad"] = Run("-d", bad, "--framework", "kubernetes", "dockerfile", *skip, *BASE_ARGS)
        if DOCKERFILES:
            runs["dockerfiles"] = Run("-f", *DOCKERFILES, "--framework", "dockerfile", *skip, *BASE_ARGS)
        # The files `make plan` writes to build/<stack>/manifests/<site>/<namespace>/.
        build = tmp_path_factory.mktemp("build")
        try:  # the recorded graphs the infra tests share, when they run in this session too
            graphs = request.getfixturevalue("graphs")
        except pytest.FixtureLookupError:
            graphs = {stack: record_stack(stack, REPO) for stack in stack_names(REPO)}
        for stack, graph in graphs.items():
            report.write(graph, build / stack)
        sites = sorted(p for p in build.glob("*/manifests/*") if p.is_dir())
        assert sites, "the shipped stacks rendered no manifests"
        for site in sites:
            runs[f"site:{site.relative_to(build)}"] = Run("-d", site, "--framework", "kubernetes", *skip, *BASE_ARGS)
        yield runs, build
    finally:
        for run in runs.values():
            run.stop()


def test_skips_file_names_each_check_once_with_a_reason():
    skips = load_skips()
    assert skips, f"{SKIPS_FILE.name} lists no skips under `skips:`"
    problems = []
    ids = skip_ids()
    for i, entry in enumerate(skips):
        check_id = str(entry.get("id") or "")
        if not CHECK_ID.match(check_id):
            problems.append(f"entry {i}: id {check_id!r} is not a Checkov check id like CKV_K8S_11")
        if len(str(entry.get("reason") or "").strip()) < 20:
            problems.append(f"{check_id or f'entry {i}'}: needs a reason saying why the check does not apply")
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        problems.append(f"listed more than once: {', '.join(dupes)}")
    assert not problems, f"{SKIPS_FILE.relative_to(REPO)}:\n" + "\n".join(problems)


@needs_checkov
def test_skipped_checks_exist_in_checkov(checkov):
    runs, _ = checkov
    table = runs["list"].output()
    titles: dict[str, str] = {}
    for row in table.splitlines():
        cells = [c.strip() for c in row.split("|")]
        if len(cells) > 5 and CHECK_ID.match(cells[2]):
            titles.setdefault(cells[2], cells[5])
    assert len(titles) > 100, f"could not read `checkov --list`:\n{table[:2000]}"
    problems = []
    for entry in load_skips():
        check_id = str(entry.get("id"))
        if check_id not in titles:
            problems.append(f"{check_id}: no such Kubernetes or Dockerfile check in this Checkov")
        elif entry.get("check") and entry["check"] != titles[check_id]:
            problems.append(f"{check_id}: Checkov calls it {titles[check_id]!r}, the file says {entry['check']!r}")
    assert not problems, f"{SKIPS_FILE.relative_to(REPO)}:\n" + "\n".join(problems)


@needs_checkov
def test_checkov_catches_a_bad_manifest_and_dockerfile(checkov):
    runs, _ = checkov
    failed = {c["check_id"] for c in runs["bad"].failed()}
    # CKV_K8S_16: privileged container; CKV_DOCKER_2: no HEALTHCHECK; CKV_DOCKER_8: runs as root.
    expected = {"CKV_K8S_16", "CKV_DOCKER_2", "CKV_DOCKER_8"}
    assert not expected & set(skip_ids()), "the canary must expect checks that are not skipped"
    assert expected <= failed, f"checkov missed {sorted(expected - failed)}; it failed {sorted(failed)}"


@needs_checkov
def test_manifests_of_every_shipped_stack_pass_checkov(checkov):
    runs, build = checkov
    failed, problems = [], []
    for name, run in runs.items():
        if not name.startswith("site:"):
            continue
        reports = run.reports()
        if not reports or any(r.get("check_type") != "kubernetes" for r in reports):
            problems.append(f"{name}: unexpected checkov output: {run.output()[:500]}")
            continue
        summary = reports[0].get("summary", {})
        if summary.get("parsing_errors") or not summary.get("resource_count"):
            problems.append(f"{name}: checkov read no resources, or could not parse some: {summary}")
        failed += run.failed()
    assert not problems, "\n".join(problems)
    if failed:
        pytest.fail(
            f"{len(failed)} Checkov findings in the rendered manifests (fix infra/workloads/, or skip a "
            f"check that does not apply, with its reason, in {SKIPS_FILE.relative_to(REPO)}):\n"
            + listing(failed, build, "build"),
            pytrace=False,
        )


@needs_checkov
@pytest.mark.skipif(not DOCKERFILES, reason="no images/*/Dockerfile yet")
def test_dockerfiles_pass_checkov(checkov):
    runs, _ = checkov
    run = runs["dockerfiles"]
    assert sum(r.get("summary", {}).get("resource_count", 0) for r in run.reports()) > 0, run.output()[:2000]
    failed = run.failed()
    if failed:
        pytest.fail(
            f"{len(failed)} Checkov findings in the Dockerfiles (fix them, or skip a check that does not "
            f"apply, with its reason, in {SKIPS_FILE.relative_to(REPO)}):\n" + listing(failed, REPO, "."),
            pytrace=False,
        )

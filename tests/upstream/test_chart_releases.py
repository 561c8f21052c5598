"""Chart pins against the charts' own release lists and Chart.yaml (their facts in upstream/charts/):
every pin is a version that was released, every Helm release the program makes uses its
pin, and what infra/charts.py says of each pin (appVersion, lowest Kubernetes) is what the
chart says."""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest

from infra.charts import KUBE_PROMETHEUS_STACK, PINS
from tests.stacks import SHIPPED
from tests.upstream import checks, vendored

BY_CHART = {pin.chart: pin for pin in PINS}


def _minor(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def _kube_version_floor(constraint: str) -> str | None:
    """The lowest Kubernetes minor a Chart.yaml kubeVersion (">=1.25.0-0", "^1.25.0-0", ">= v1.10.0-0") admits."""
    m = re.search(r"(?:>=|\^|~)\s*v?(\d+\.\d+)", constraint)
    return m[1] if m else None


def test_every_chart_the_program_can_install_is_pinned_once():
    assert len(BY_CHART) == len(PINS)


@pytest.mark.parametrize("pin", PINS, ids=lambda p: p.chart)
def test_pin_is_a_released_version_and_is_what_upstream_holds(pin):
    assert checks.pin_problems(pin) == []


@pytest.mark.parametrize("pin", PINS, ids=lambda p: p.chart)
def test_pin_app_version_is_the_charts(pin):
    assert str(vendored.chart_meta(pin.chart)["appVersion"]) == pin.app_version


@pytest.mark.parametrize("pin", PINS, ids=lambda p: p.chart)
def test_pin_kubernetes_range_is_within_what_the_chart_admits(pin):
    assert _minor(pin.kube_min) <= _minor(pin.kube_max or "99.99")
    floor = _kube_version_floor(str(vendored.chart_meta(pin.chart).get("kubeVersion", "")))
    # Where Chart.yaml sets no kubeVersion, the range's source is the one cited in infra/charts.py.
    if floor is not None:
        assert _minor(pin.kube_min) >= _minor(floor), f"{pin.chart}: Chart.yaml kubeVersion admits {floor}+ only"


@pytest.mark.parametrize("stack", SHIPPED)
def test_every_helm_release_uses_its_pin(graphs, stack):
    releases = checks.helm_releases(graphs[stack])
    assert releases
    assert [p for r in releases for p in checks.release_problems(r)] == []


# --- negative controls: each check fails on what it exists to catch ---


def test_a_pin_that_was_never_released_is_caught():
    # kube-prometheus-stack went from 81.4.3 to 81.5.0; 81.4.5 was pinned here once.
    never = dataclasses.replace(KUBE_PROMETHEUS_STACK, version="81.4.5")
    problems = checks.pin_problems(never)
    assert any("81.4.5 was never released" in p for p in problems), problems


def test_a_pin_bumped_without_refreshing_upstream_is_caught():
    older = vendored.release_versions(KUBE_PROMETHEUS_STACK.chart)[1]
    problems = checks.pin_problems(dataclasses.replace(KUBE_PROMETHEUS_STACK, version=older))
    assert any("upstream/ holds" in p for p in problems), problems


@pytest.mark.parametrize(
    "breakage",
    [
        lambda inputs: inputs.update(version="81.4.5"),
        lambda inputs: inputs.update(repositoryOpts={"repo": "https://charts.example.com"}),
        lambda inputs: inputs.update(chart="kube-prometheus"),
    ],
    ids=["version-never-released", "other-repo", "unpinned-chart"],
)
def test_a_release_off_its_pin_is_caught(graphs, breakage):
    release = checks.helm_releases(graphs["dev"])[0]
    assert checks.release_problems(release) == []
    broken = dataclasses.replace(release, inputs=copy.deepcopy(release.inputs))
    breakage(broken.inputs)
    assert checks.release_problems(broken)

"""GPU instance types per cloud, loaded from the YAML files beside this module.

The figures are data with a source and a date, so a price change is a one-line edit
reviewed like any other, and every reader (config validation, scheduling checks,
cost estimate, policy) sees the same numbers.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CLOUDS = ("aws", "gcp", "azure")
_HERE = Path(__file__).parent


@dataclass(frozen=True)
class Gpu:
    model: str
    memory_gib: int
    compute_capability: float

    @property
    def supports_bf16(self) -> bool:
        # bf16 tensor cores arrived with Ampere (compute capability 8.0).
        return self.compute_capability >= 8.0


@dataclass(frozen=True)
class InstanceType:
    cloud: str
    name: str
    gpu: Gpu
    gpus: int
    vcpu: int
    memory_gib: int
    on_demand_hourly: float
    spot_hourly: float
    accelerator: str | None  # the cloud's own accelerator name, where it needs one (GCP)

    def hourly(self, spot: bool) -> float:
        return self.spot_hourly if spot else self.on_demand_hourly


@dataclass(frozen=True)
class CloudCatalog:
    cloud: str
    reference_region: str
    as_of: str
    source: str
    instances: dict[str, InstanceType]


@cache
def gpus() -> dict[str, Gpu]:
    raw = yaml.safe_load((_HERE / "gpus.yaml").read_text())
    return {name: Gpu(model=name, **spec) for name, spec in raw.items()}


@cache
def catalog(cloud: str) -> CloudCatalog:
    if cloud not in CLOUDS:
        raise KeyError(f"unknown cloud {cloud!r}; known: {', '.join(CLOUDS)}")
    raw = yaml.safe_load((_HERE / f"{cloud}.yaml").read_text())
    known_gpus = gpus()
    instances = {
        name: InstanceType(
            cloud=cloud,
            name=name,
            gpu=known_gpus[spec["gpu"]],
            gpus=spec["gpus"],
            vcpu=spec["vcpu"],
            memory_gib=spec["memory_gib"],
            on_demand_hourly=spec["on_demand"],
            spot_hourly=spec["spot"],
            accelerator=spec.get("accelerator"),
        )
        for name, spec in raw["instances"].items()
    }
    return CloudCatalog(
        cloud=cloud,
        reference_region=raw["reference_region"],
        as_of=str(raw["as_of"]),
        source=raw["source"],
        instances=instances,
    )


def instance(cloud: str, name: str) -> InstanceType:
    return catalog(cloud).instances[name]


# What a spot CPU node costs against on-demand, where prices.yaml lists on-demand only (GPU
# instances carry both prices in their cloud's catalog).
CPU_SPOT_FACTOR = 0.4


@cache
def list_prices() -> dict[str, Any]:
    """List prices of everything but GPU instances (prices.yaml, with its sources and date)."""
    return yaml.safe_load((_HERE / "prices.yaml").read_text())


def cpu_node_hourly(cloud: str, instance_type: str, spot: bool) -> float | None:
    """USD per hour of a CPU node, or None when prices.yaml does not list its type."""
    hourly = list_prices().get(cloud, {}).get("instances", {}).get(instance_type)
    if hourly is None:
        return None
    return float(hourly) * (CPU_SPOT_FACTOR if spot else 1.0)


SUPPORT_CALENDAR = _HERE.parents[1] / "upstream" / "kubernetes" / "support.yaml"


@dataclass(frozen=True)
class KubernetesSupport:
    """What a cloud offers for one Kubernetes minor, from upstream/kubernetes/support.yaml."""

    cloud: str
    minor: str
    # Last day a new cluster of this minor gets standard support (EKS standard support, GKE
    # end of standard support, AKS end of community support); None where no date is known.
    end_of_standard_support: datetime.date | None
    # Empty where a new cluster of this minor can be created as this program creates it (GKE:
    # on `channel`; AKS: without the LTS plan); otherwise why not.
    not_offered: str


@cache
def _support_calendar() -> dict:
    return yaml.safe_load(SUPPORT_CALENDAR.read_text())


def kubernetes_support(cloud: str, minor: str, channel: str | None = None) -> KubernetesSupport:
    """Whether and until when `cloud` supports `minor` for a new cluster (`channel`: GKE's release channel)."""
    entry = _support_calendar()["clouds"].get(cloud, {}).get(minor)
    read = _support_calendar()["read"]
    if entry is None:
        return KubernetesSupport(
            cloud, minor, None, f"{cloud} does not offer Kubernetes {minor} (calendar read {read})"
        )
    end = entry.get("end_of_standard_support") or entry.get("end_of_life")
    reason = ""
    if cloud == "aws" and "released" not in entry:
        reason = f"EKS has not released Kubernetes {minor}"
    elif cloud == "gcp" and channel and channel not in entry.get("channels", []):
        reason = (
            f"GKE's {channel} channel does not offer {minor} "
            f"(it offers it on: {', '.join(entry.get('channels', [])) or 'none'})"
        )
    elif cloud == "azure" and entry.get("lts_only"):
        reason = f"AKS offers {minor} only with the Premium tier's long-term support plan"
    elif cloud == "azure" and entry.get("supported") is False:
        reason = f"AKS no longer supports {minor}"
    return KubernetesSupport(cloud, minor, end, reason)


@dataclass(frozen=True)
class ImageUser:
    image: str
    version: str
    user: str
    uid: int
    gid: int


@cache
def vllm_image_user() -> ImageUser:
    """The user the pinned vLLM image defines (upstream/vllm/image.yaml, read from its Dockerfile)."""
    raw = yaml.safe_load((_HERE.parents[1] / "upstream" / "vllm" / "image.yaml").read_text())
    return ImageUser(raw["image"], str(raw["version"]), raw["user"], int(raw["uid"]), int(raw["gid"]))

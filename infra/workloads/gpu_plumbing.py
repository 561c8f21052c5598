"""What GPU nodes need before a pod can ask for `nvidia.com/gpu`: NVIDIA's device plugin,
from NVIDIA's own Helm chart, where the cloud does not install one itself."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.charts import NVIDIA_DEVICE_PLUGIN
from infra.platform import Platform


class GpuPlumbing(pulumi.ComponentResource):
    def __init__(self, name: str, platform: Platform, opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:workloads:GpuPlumbing", name, None, opts)
        self.releases: list[k8s.helm.v3.Release] = []
        if platform.needs_device_plugin:
            # Tolerate every taint a GPU pool carries (the GPU taint, and spot taints where
            # a cloud adds them), or the plugin never lands on the nodes it serves.
            tolerations = [{"key": "CriticalAddonsOnly", "operator": "Exists"}] + [
                {"key": t.key, "operator": "Exists", "effect": t.effect}
                for t in sorted({t for pool in platform.gpu_pools for t in pool.taints}, key=lambda t: t.key)
            ]
            self.releases.append(
                NVIDIA_DEVICE_PLUGIN.release(
                    f"{name}-device-plugin",
                    "nvidia-device-plugin",
                    namespace="kube-system",
                    values={"tolerations": tolerations, "priorityClassName": "system-node-critical"},
                    opts=pulumi.ResourceOptions(parent=self, depends_on=list(platform.ready)),
                )
            )
        self.register_outputs({})

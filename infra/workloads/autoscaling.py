"""Autoscaling on one site: KEDA from its Helm chart, a ScaledObject per model that scales
its vLLM Deployment on the queue (vLLM's own and the gateway's count of requests waiting for
that model), and one for the gateway on CPU and in-flight requests.

The gateway's waiting count is what wakes a model scaled to zero: vLLM exports nothing while
no replica runs, but the gateway holds the request and counts it.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.charts import KEDA
from infra.config import Gateway as GatewayConfig
from infra.config import ModelSpec
from infra.labels import vllm_name
from infra.platform import Platform
from infra.workloads.namespaces import namespace

NAMESPACE = "keda"
# Requests waiting in vLLM per replica before KEDA adds one.
VLLM_WAITING_PER_REPLICA = 4
# Requests in flight per gateway replica before KEDA adds one.
GATEWAY_IN_FLIGHT_PER_REPLICA = 200
# A model scaled to zero stays up this long after its last queued request.
COOLDOWN_SECONDS = 600


def _prometheus(server: str, query: str, threshold: int, activation: int = 0) -> dict:
    return {
        "type": "prometheus",
        "metadata": {
            "serverAddress": server,
            # `or vector(0)`: with no replica there is no series, and KEDA reads that as an error.
            "query": f"({query}) or vector(0)",
            "threshold": str(threshold),
            "activationThreshold": str(activation),
        },
    }


def model_triggers(model: ModelSpec, server: str) -> list[dict]:
    return [
        _prometheus(server, f'sum(vllm:num_requests_waiting{{model_name="{model.name}"}})', VLLM_WAITING_PER_REPLICA),
        # One waiting request activates a model at zero; more add replicas like vLLM's queue does.
        _prometheus(server, f'sum(gateway_requests_waiting{{model="{model.name}"}})', VLLM_WAITING_PER_REPLICA),
    ]


class Autoscaling(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        platform: Platform,
        models: list[ModelSpec],
        gateway: GatewayConfig,
        workloads_namespace: str,
        prometheus_url: str,
        opts: pulumi.ResourceOptions,
    ):
        super().__init__("llm-platform:workloads:Autoscaling", name, None, opts)
        ns = namespace(
            f"{name}-ns", NAMESPACE, "baseline", pulumi.ResourceOptions(parent=self, provider=platform.provider)
        )
        system = dict(platform.system_pool.labels)
        self.release = KEDA.release(
            f"{name}-keda",
            "keda",
            namespace=NAMESPACE,
            values={
                "nodeSelector": system,
                "prometheus": {"operator": {"enabled": True, "serviceMonitor": {"enabled": True}}},
            },
            opts=pulumi.ResourceOptions(parent=self, provider=platform.provider, depends_on=[ns, *platform.ready]),
        )
        after_crds = pulumi.ResourceOptions(parent=self, provider=platform.provider, depends_on=[self.release])

        def scaled_object(resource: str, target: str, spec: dict) -> None:
            k8s.apiextensions.CustomResource(
                f"{name}-{resource}",
                api_version="keda.sh/v1alpha1",
                kind="ScaledObject",
                metadata={"name": target, "namespace": workloads_namespace},
                spec={"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}, **spec},
                opts=after_crds,
            )

        for model in models:
            scaled_object(
                f"{model.name}-scaler",
                vllm_name(model.name),
                {
                    "minReplicaCount": model.replicas.min,
                    "maxReplicaCount": model.replicas.max,
                    "pollingInterval": 10,
                    "cooldownPeriod": COOLDOWN_SECONDS,
                    "advanced": {
                        "horizontalPodAutoscalerConfig": {
                            # A new replica takes minutes to load its model: add fast, remove slowly.
                            "behavior": {
                                "scaleUp": {
                                    "stabilizationWindowSeconds": 0,
                                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
                                },
                                "scaleDown": {
                                    "stabilizationWindowSeconds": 600,
                                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}],
                                },
                            }
                        }
                    },
                    "triggers": model_triggers(model, prometheus_url),
                },
            )
        scaled_object(
            "gateway-scaler",
            "gateway",
            {
                "minReplicaCount": max(gateway.replicas.min, 1),
                "maxReplicaCount": gateway.replicas.max,
                "pollingInterval": 15,
                "triggers": [
                    {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}},
                    _prometheus(prometheus_url, "sum(gateway_requests_in_flight)", GATEWAY_IN_FLIGHT_PER_REPLICA),
                ],
            },
        )
        self.register_outputs({})

"""Cloud-agnostic Kubernetes workloads, deployed onto any Platform.

Nothing here imports a cloud SDK: what differs between clouds arrives as Platform data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.config import StackConfig
from infra.labels import COMPONENT, GATEWAY_SELECTOR
from infra.platform import Platform
from infra.secrets import Secrets
from infra.workloads.autoscaling import Autoscaling
from infra.workloads.gateway import (
    API_KEYS_SECRET,
    PROVIDERS_SECRET,
    REDIS_CA_CONFIGMAP,
    REDIS_CA_FILE,
    REDIS_SECRET,
    Gateway,
    provider_keys,
)
from infra.workloads.gpu_plumbing import GpuPlumbing
from infra.workloads.images import gateway_image, vllm_image
from infra.workloads.model_server import HF_TOKEN_SECRET, ModelServer
from infra.workloads.monitoring import NAMESPACE as MONITORING_NAMESPACE
from infra.workloads.monitoring import Monitoring
from infra.workloads.namespaces import namespace
from infra.workloads.vllm_args import KV_EVENTS_PORT, KV_REPLAY_PORT
from infra.workloads.vllm_args import PORT as VLLM_PORT

NAMESPACE = "llm"


@dataclass(frozen=True)
class SiteWorkloads:
    gateway_url: pulumi.Output[str]
    grafana: str | None = None  # how to reach Grafana; None where monitoring is off


def api_keys_file(keys: dict[str, str]) -> str:
    """`<key-id> <sha256 hex>` lines: the gateway stores hashes, never the keys."""
    return "".join(f"{key_id} {hashlib.sha256(key.encode()).hexdigest()}\n" for key_id, key in sorted(keys.items()))


class Workloads(pulumi.ComponentResource):
    def __init__(self, name: str, cfg: StackConfig, platform: Platform, secrets: Secrets, opts: pulumi.ResourceOptions):
        super().__init__("llm-platform:workloads:Site", name, None, opts)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=platform.provider)
        ns = namespace(f"{name}-ns", NAMESPACE, "baseline", k8s_opts)
        in_ns = pulumi.ResourceOptions(parent=self, provider=platform.provider, depends_on=[ns])
        plumbing = GpuPlumbing(f"{name}-gpu", platform, k8s_opts)

        def secret(resource: str, secret_name: str, data: dict[str, pulumi.Input[str]]) -> k8s.core.v1.Secret:
            return k8s.core.v1.Secret(
                f"{name}-{resource}",
                metadata={"name": secret_name, "namespace": NAMESPACE},
                type="Opaque",
                string_data={k: pulumi.Output.secret(v) for k, v in data.items()},
                opts=in_ns,
            )

        if secrets.hf_token is not None:
            secret("hf-token", HF_TOKEN_SECRET, {"token": secrets.hf_token})
        redis = platform.redis
        scheme = "rediss" if redis.tls else "redis"
        redis_url = pulumi.Output.format("{0}://:{1}@{2}:{3}/0", scheme, redis.auth_token, redis.host, redis.port)
        if redis.ca_cert is not None:
            # A private CA is public data; redis-py takes its path as a URL query argument.
            k8s.core.v1.ConfigMap(
                f"{name}-redis-ca",
                metadata={"name": REDIS_CA_CONFIGMAP, "namespace": NAMESPACE},
                data={"ca.crt": redis.ca_cert},
                opts=in_ns,
            )
            redis_url = pulumi.Output.concat(redis_url, f"?ssl_ca_certs={REDIS_CA_FILE}")
        secret("redis", REDIS_SECRET, {"url": redis_url})
        keys = secrets.api_keys.apply(api_keys_file) if secrets.api_keys is not None else ""
        secret("api-keys", API_KEYS_SECRET, {"keys": keys})
        if cfg.gateway.providers:
            if secrets.provider_keys is None:  # config.parse refuses providers without providerKeys
                raise ValueError("gateway.providers without the providerKeys secret")
            keys_json = secrets.provider_keys.apply(lambda keys: provider_keys(keys, cfg.gateway))
            secret("providers", PROVIDERS_SECRET, {"keys": keys_json})

        models = [cfg.model(m) for m in platform.site.models]
        # KEDA scales on Prometheus, so autoscaling comes with monitoring.
        monitored = platform.site.monitoring
        after_gpus = pulumi.ResourceOptions(
            parent=self,
            provider=platform.provider,
            depends_on=[ns, *plumbing.releases, *platform.ready, *platform.images.ready],
        )
        vllm = vllm_image(
            f"{name}-vllm-image", platform.images, cfg.images.vllm, pulumi.ResourceOptions(parent=self)
        ).ref
        for model in models:
            ModelServer(
                f"{name}-{model.name}",
                model,
                platform,
                NAMESPACE,
                vllm,
                secrets.hf_token is not None,
                after_gpus,
                autoscaled=monitored,
            )
        gateway = Gateway(
            f"{name}-gateway",
            cfg.gateway,
            models,
            platform,
            NAMESPACE,
            gateway_image(
                f"{name}-gateway-image", platform.images, cfg.images.gateway_tag, pulumi.ResourceOptions(parent=self)
            ).ref,
            in_ns,
            keda_autoscaled=monitored,
        )
        self.grafana: str | None = None
        if monitored:
            monitoring = Monitoring(f"{name}-monitoring", cfg, platform, NAMESPACE, k8s_opts)
            Autoscaling(
                f"{name}-autoscaling",
                platform,
                models,
                cfg.gateway,
                NAMESPACE,
                monitoring.prometheus_url,
                pulumi.ResourceOptions(parent=self, provider=platform.provider, depends_on=[ns, monitoring.release]),
            )
            self.grafana = monitoring.grafana
            pulumi.export(f"{platform.site.name}.grafana", monitoring.grafana)
            pulumi.export(f"{platform.site.name}.grafanaAdminPassword", monitoring.grafana_password)
        # Only the gateway (and Prometheus, for /metrics) may reach vLLM.
        k8s.networking.v1.NetworkPolicy(
            f"{name}-vllm-ingress",
            metadata={"name": "vllm-ingress", "namespace": NAMESPACE},
            spec={
                "podSelector": {"matchLabels": {COMPONENT: "vllm"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [
                            {"podSelector": {"matchLabels": GATEWAY_SELECTOR}},
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}
                                }
                            },
                        ],
                        "ports": [{"protocol": "TCP", "port": VLLM_PORT}],
                    },
                    # The gateway subscribes to each replica's KV cache events.
                    {
                        "from": [{"podSelector": {"matchLabels": GATEWAY_SELECTOR}}],
                        "ports": [
                            {"protocol": "TCP", "port": KV_EVENTS_PORT},
                            {"protocol": "TCP", "port": KV_REPLAY_PORT},
                        ],
                    },
                ],
            },
            opts=in_ns,
        )
        self.gateway_url = gateway.url
        self.register_outputs({"gatewayUrl": gateway.url})


def deploy(cfg: StackConfig, platform: Platform, secrets: Secrets) -> SiteWorkloads:
    workloads = Workloads(platform.site.name, cfg, platform, secrets, pulumi.ResourceOptions())
    return SiteWorkloads(gateway_url=workloads.gateway_url, grafana=workloads.grafana)


__all__ = ["deploy", "Secrets", "SiteWorkloads", "NAMESPACE"]

"""The OpenAI-compatible gateway on one site: Deployment, LoadBalancer Service, HPA, PDB."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pulumi
import pulumi_kubernetes as k8s

from infra.config import Gateway as GatewayConfig
from infra.config import ModelSpec
from infra.labels import GATEWAY_SELECTOR, labels, vllm_name
from infra.platform import Platform
from infra.workloads.monitoring import NAMESPACE as MONITORING_NAMESPACE
from infra.workloads.vllm_args import KV_EVENTS_PORT, KV_EVENTS_TOPIC, KV_REPLAY_PORT
from infra.workloads.vllm_args import PORT as VLLM_PORT

PORT = 8080
# /metrics and /openapi.json: not on the load balancer, reachable from the monitoring namespace only.
METRICS_PORT = 9090
GATEWAY_UID = 10001
API_KEYS_SECRET = "gateway-api-keys"
REDIS_SECRET = "gateway-redis"
# The hosted providers' API keys: key `keys`, the JSON object GATEWAY_PROVIDER_KEYS reads.
PROVIDERS_SECRET = "gateway-providers"
KEYS_DIR = "/etc/gateway/keys"
REDIS_CA_CONFIGMAP = "gateway-redis-ca"
REDIS_CA_DIR = "/etc/gateway/redis-ca"
REDIS_CA_FILE = f"{REDIS_CA_DIR}/ca.crt"


def upstream_dns(models: list[ModelSpec], namespace: str) -> str:
    """`host:port` of each model's headless Service: the gateway re-resolves them to find
    every ready replica and learns which model each serves from its /v1/models."""
    return ",".join(f"{vllm_name(m.name)}.{namespace}.svc.cluster.local:{VLLM_PORT}" for m in models)


def hybrid_env(cfg: GatewayConfig) -> list[dict]:
    """The gateway's hosted providers, fallback chain and routing rules, in the shapes its
    settings read (app/gateway/settings.py and hybrid.py: snake_case keys, the chain
    comma-separated); the providers' keys come from the PROVIDERS_SECRET."""
    env: list[dict] = [{"name": "GATEWAY_PREFILL_TOKENS_PER_S", "value": str(cfg.prefill_tokens_per_second)}]
    if cfg.providers:
        providers = [{"name": p.name, "base_url": p.base_url} for p in cfg.providers]
        env += [
            {"name": "GATEWAY_PROVIDERS", "value": json.dumps(providers)},
            {
                "name": "GATEWAY_PROVIDER_KEYS",
                "valueFrom": {"secretKeyRef": {"name": PROVIDERS_SECRET, "key": "keys"}},
            },
        ]
    if cfg.fallback:
        env.append({"name": "GATEWAY_FALLBACK_CHAIN", "value": ",".join(cfg.fallback)})
    if cfg.routes:
        routes = [
            {
                "name": r.name,
                "match": r.match.model_dump(exclude_none=True),
                **({"model": r.model} if r.model is not None else {}),
                **({"providers": r.providers} if r.providers else {}),
            }
            for r in cfg.routes
        ]
        env.append({"name": "GATEWAY_ROUTES", "value": json.dumps(routes)})
    return env


def provider_keys(keys: Mapping[str, str], cfg: GatewayConfig) -> str:
    """GATEWAY_PROVIDER_KEYS' value from the providerKeys secret: the keys of the configured
    providers only (config checked each has one)."""
    return json.dumps({p.name: keys[p.name] for p in cfg.providers})


class Gateway(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        cfg: GatewayConfig,
        models: list[ModelSpec],
        platform: Platform,
        namespace: str,
        image: pulumi.Input[str],
        opts: pulumi.ResourceOptions,
        keda_autoscaled: bool = False,
    ):
        super().__init__("llm-platform:workloads:Gateway", name, None, opts)
        # Children wait for what the component waits for (the namespace); Pulumi does not
        # pass a component's dependsOn down by itself.
        after = list(opts.depends_on or [])
        child = pulumi.ResourceOptions(parent=self, depends_on=after)
        meta_labels = {**labels("gateway", "gateway"), **GATEWAY_SELECTOR}
        meta = {"name": "gateway", "namespace": namespace, "labels": meta_labels}

        env: list[dict] = [
            {"name": "GATEWAY_UPSTREAM_DNS", "value": upstream_dns(models, namespace)},
            # Known models: while none of their replicas is up, a request gets 503, not 404 ...
            {"name": "GATEWAY_MODELS", "value": ",".join(m.name for m in models)},
            # ... and those that may scale to zero hold it while a replica starts.
            {
                "name": "GATEWAY_SCALE_FROM_ZERO_MODELS",
                "value": ",".join(m.name for m in models if m.replicas.min == 0),
            },
            {"name": "GATEWAY_METRICS_PORT", "value": str(METRICS_PORT)},
            # What each replica holds, from its KV cache events, on every replica's address.
            {"name": "GATEWAY_KV_EVENTS_PORT", "value": str(KV_EVENTS_PORT)},
            {"name": "GATEWAY_KV_REPLAY_PORT", "value": str(KV_REPLAY_PORT)},
            {"name": "GATEWAY_KV_EVENTS_TOPIC", "value": KV_EVENTS_TOPIC},
            {"name": "GATEWAY_HOLD_TIMEOUT_S", "value": str(cfg.hold_timeout_seconds)},
            {"name": "GATEWAY_API_KEYS_FILE", "value": f"{KEYS_DIR}/keys"},
            {"name": "GATEWAY_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": REDIS_SECRET, "key": "url"}}},
            {"name": "GATEWAY_REDIS_FAIL_MODE", "value": cfg.redis_fail_mode},
            {"name": "GATEWAY_DEFAULT_RPM", "value": str(cfg.rate_limits.requests_per_minute)},
            {"name": "GATEWAY_DEFAULT_TPM", "value": str(cfg.rate_limits.tokens_per_minute)},
            *hybrid_env(cfg),
        ]
        probe = {"port": "http"}
        mounts = [
            {"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ]
        volumes: list[dict] = [
            {"name": "api-keys", "secret": {"secretName": API_KEYS_SECRET}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ]
        if platform.redis.ca_cert is not None:
            mounts.append({"name": "redis-ca", "mountPath": REDIS_CA_DIR, "readOnly": True})
            volumes.append({"name": "redis-ca", "configMap": {"name": REDIS_CA_CONFIGMAP}})
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deploy",
            metadata=meta,
            spec={
                "replicas": cfg.replicas.min if cfg.replicas.min else 1,
                "selector": {"matchLabels": GATEWAY_SELECTOR},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {
                    "metadata": {"labels": meta_labels},
                    "spec": {
                        "nodeSelector": dict(platform.system_pool.labels),
                        "automountServiceAccountToken": False,
                        "terminationGracePeriodSeconds": 30,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": GATEWAY_UID,
                            "runAsGroup": GATEWAY_UID,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        # Replicas in different zones, so one zone's loss leaves the gateway up.
                        "topologySpreadConstraints": [
                            {
                                "maxSkew": 1,
                                "topologyKey": "topology.kubernetes.io/zone",
                                "whenUnsatisfiable": "ScheduleAnyway",
                                "labelSelector": {"matchLabels": GATEWAY_SELECTOR},
                            }
                        ],
                        "containers": [
                            {
                                "name": "gateway",
                                "image": image,
                                "args": ["--port", str(PORT)],
                                "ports": [
                                    {"name": "http", "containerPort": PORT, "protocol": "TCP"},
                                    {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                                ],
                                "env": env,
                                "resources": {
                                    "requests": {"cpu": cfg.cpu, "memory": cfg.memory},
                                    "limits": {"memory": cfg.memory},
                                },
                                "readinessProbe": {"httpGet": {"path": "/readyz", **probe}, "periodSeconds": 5},
                                "livenessProbe": {
                                    "httpGet": {"path": "/healthz", **probe},
                                    "periodSeconds": 10,
                                    "failureThreshold": 3,
                                },
                                "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": mounts,
                            }
                        ],
                        "volumes": volumes,
                    },
                },
            },
            # The autoscaler owns the replica count after the first apply.
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[*after, *platform.ready], ignore_changes=["spec.replicas"]
            ),
        )
        self.service = k8s.core.v1.Service(
            f"{name}-svc",
            metadata={**meta, "annotations": dict(platform.lb_annotations)},
            spec={
                "type": "LoadBalancer",
                "selector": GATEWAY_SELECTOR,
                "externalTrafficPolicy": "Local",
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
            },
            # The cloud's load-balancer controller must be answering first (on EKS its Service
            # webhook rejects a Service while it is not).
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*after, *platform.ready]),
        )
        if not keda_autoscaled:
            # Where KEDA runs, its ScaledObject (CPU and in-flight requests) replaces this HPA.
            k8s.autoscaling.v2.HorizontalPodAutoscaler(
                f"{name}-hpa",
                metadata=meta,
                spec={
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"},
                    "minReplicas": max(cfg.replicas.min, 1),
                    "maxReplicas": cfg.replicas.max,
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                        }
                    ],
                },
                opts=child,
            )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=meta,
            spec={"maxUnavailable": 1, "selector": {"matchLabels": GATEWAY_SELECTOR}},
            opts=child,
        )
        # Clients (through the load balancer, source IPs kept) reach the HTTP port; only
        # Prometheus, from the monitoring namespace, reaches the metrics port.
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol",
            metadata=meta,
            spec={
                "podSelector": {"matchLabels": GATEWAY_SELECTOR},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"ports": [{"protocol": "TCP", "port": PORT}]},
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}
                                }
                            }
                        ],
                        "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
                    },
                ],
            },
            opts=child,
        )
        ingress = self.service.status.apply(
            lambda s: (s.load_balancer.ingress or [None])[0] if s and s.load_balancer else None
        )
        self.url = ingress.apply(lambda i: f"http://{(i.hostname or i.ip) if i else 'pending'}")
        self.register_outputs({"url": self.url})

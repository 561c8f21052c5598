"""One model's vLLM replicas on one site: Deployment, Services, PodDisruptionBudget."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.catalog import vllm_image_user
from infra.config import ModelSpec
from infra.labels import (
    EXPECTED_REPLICAS,
    KV_BYTES_PER_TOKEN,
    MAX_REPLICAS,
    PARAMS_BILLION,
    QUANTIZATION,
    labels,
    vllm_name,
    vllm_selector,
)
from infra.platform import Platform
from infra.workloads.sizing import STARTUP_PERIOD_SECONDS, await_seconds, kv_bytes_per_token, pod_size
from infra.workloads.vllm_args import CACHE_DIR, KV_EVENTS_PORT, KV_REPLAY_PORT, PORT, serve_args

HF_TOKEN_SECRET = "hf-token"
# The upstream image's own `vllm` user (uid 2000, gid 0). images/vllm runs as it; the pod names
# it too, so runAsNonRoot is checked against a number whatever the image's USER says.
VLLM_USER = vllm_image_user()
# Checkov's CKV_K8S_40 wants uid >= 10000 to avoid host accounts; the image's user is 2000,
# and only a passwd entry in the image (or USER in the environment) keeps getuser() working.
CHECKOV_SKIPS = {
    "checkov.io/skip1": "CKV_K8S_40=the vLLM image defines its user as uid 2000 (upstream/vllm/image.yaml)"
}


class ModelServer(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        model: ModelSpec,
        platform: Platform,
        namespace: pulumi.Input[str],
        image: pulumi.Input[str],
        has_hf_token: bool,
        opts: pulumi.ResourceOptions,
        autoscaled: bool = False,
    ):
        super().__init__("llm-platform:workloads:ModelServer", name, None, opts)
        # Children wait for what the component waits for (namespace, GPU nodes, device plugin);
        # Pulumi does not pass a component's dependsOn down by itself.
        after = list(opts.depends_on or [])
        child = pulumi.ResourceOptions(parent=self, depends_on=after)
        pool = platform.gpu_pool(model.gpu_pool)
        size = pod_size(model, pool)
        self.service_name = vllm_name(model.name)
        selector = vllm_selector(model.name)
        meta_labels = {**labels("vllm", model.name), **selector}

        # Cache paths, HOME and the user name come from the image (images/vllm/Dockerfile).
        env = []
        if has_hf_token:
            env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": HF_TOKEN_SECRET, "key": "token"}}})

        if platform.storage.rwx:
            cache_volume = {"name": "model-cache", "persistentVolumeClaim": {"claimName": f"{self.service_name}-cache"}}
            k8s.core.v1.PersistentVolumeClaim(
                f"{name}-cache",
                metadata={"name": f"{self.service_name}-cache", "namespace": namespace, "labels": meta_labels},
                spec={
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": platform.storage.rwx,
                    "resources": {"requests": {"storage": f"{size.cache_gib}Gi"}},
                },
                opts=child,
            )
        else:
            # No shared file system: each pod gets its own volume, created and deleted with it.
            cache_volume = {
                "name": "model-cache",
                "ephemeral": {
                    "volumeClaimTemplate": {
                        "metadata": {"labels": meta_labels},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "storageClassName": platform.storage.rwo,
                            "resources": {"requests": {"storage": f"{size.cache_gib}Gi"}},
                        },
                    }
                },
            }

        create_s, update_s = await_seconds(size, model.replicas.max)
        http_get = {"path": "/health", "port": "http"}
        container = {
            "name": "vllm",
            "image": image,
            "command": ["vllm", "serve"],
            "args": serve_args(model),
            "ports": [
                {"name": "http", "containerPort": PORT, "protocol": "TCP"},
                {"name": "kv-events", "containerPort": KV_EVENTS_PORT, "protocol": "TCP"},
                {"name": "kv-replay", "containerPort": KV_REPLAY_PORT, "protocol": "TCP"},
            ],
            "env": env,
            "resources": {
                "requests": {
                    "cpu": f"{size.cpu_millis}m",
                    "memory": f"{size.memory_mib}Mi",
                    "nvidia.com/gpu": str(size.gpus),
                },
                "limits": {"memory": f"{size.memory_mib}Mi", "nvidia.com/gpu": str(size.gpus)},
            },
            "startupProbe": {
                "httpGet": http_get,
                "periodSeconds": STARTUP_PERIOD_SECONDS,
                "failureThreshold": size.startup_failure_threshold,
            },
            "readinessProbe": {"httpGet": http_get, "periodSeconds": 5, "failureThreshold": 3, "timeoutSeconds": 3},
            "livenessProbe": {"httpGet": http_get, "periodSeconds": 15, "failureThreshold": 4, "timeoutSeconds": 5},
            # Endpoints drop the pod first; the sleep lets in-flight streams finish before SIGTERM.
            "lifecycle": {"preStop": {"sleep": {"seconds": 15}}},
            # Everything vLLM writes goes to mounted volumes: HOME and temp files to /tmp, Hugging
            # Face, torch.compile and Triton caches to the model cache, NCCL to /dev/shm.
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": VLLM_USER.uid,
                "runAsGroup": VLLM_USER.gid,
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [
                {"name": "model-cache", "mountPath": CACHE_DIR},
                {"name": "dshm", "mountPath": "/dev/shm"},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }
        annotations = {
            EXPECTED_REPLICAS: str(model.replicas.typical),
            MAX_REPLICAS: str(model.replicas.max),
            PARAMS_BILLION: str(model.params_billion),
            KV_BYTES_PER_TOKEN: str(kv_bytes_per_token(model)),
        }
        if model.quantization:
            annotations[QUANTIZATION] = model.quantization
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deploy",
            metadata={
                "name": self.service_name,
                "namespace": namespace,
                "labels": meta_labels,
                "annotations": {**annotations, **CHECKOV_SKIPS},
            },
            spec={
                # The floor; with min 0 the model scales from zero on demand (see autoscaling).
                "replicas": model.replicas.min,
                "selector": {"matchLabels": selector},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {
                    "metadata": {"labels": meta_labels},
                    "spec": {
                        "nodeSelector": dict(pool.labels),
                        "tolerations": [
                            {"key": t.key, "operator": "Equal", "value": t.value, "effect": t.effect}
                            for t in pool.taints
                        ],
                        "automountServiceAccountToken": False,
                        "terminationGracePeriodSeconds": 60,
                        "securityContext": {
                            "runAsNonRoot": True,
                            # Volumes writable by the image's group, as its own directories are.
                            "fsGroup": VLLM_USER.gid,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [container],
                        "volumes": [
                            cache_volume,
                            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{size.shm_mib}Mi"}},
                            {"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}},
                        ],
                    },
                },
            },
            # Once KEDA owns the replica count, an update must not reset it to the floor.
            # Pulumi waits 10 minutes for a Deployment by default; a model takes its node,
            # its image and its load to become ready.
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=after,
                ignore_changes=["spec.replicas"] if autoscaled else None,
                custom_timeouts=pulumi.CustomTimeouts(create=f"{create_s}s", update=f"{update_s}s"),
            ),
        )
        # Headless, so the gateway resolves every ready replica and routes to each itself.
        self.service = k8s.core.v1.Service(
            f"{name}-svc",
            metadata={"name": self.service_name, "namespace": namespace, "labels": meta_labels},
            spec={
                "clusterIP": "None",
                "selector": selector,
                "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
            },
            opts=child,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata={"name": self.service_name, "namespace": namespace, "labels": meta_labels},
            spec={"maxUnavailable": 1, "selector": {"matchLabels": selector}},
            opts=child,
        )
        self.register_outputs({"service": self.service_name})

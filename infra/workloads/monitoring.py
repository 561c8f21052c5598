"""Monitoring on one site: Prometheus, Alertmanager and Grafana from kube-prometheus-stack,
NVIDIA's DCGM exporter, scrape targets for vLLM and the gateway, and the alert rules and
dashboards kept as plain files under monitoring/ (rules are unit-tested with promtool there).
"""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
import yaml

from infra.catalog import cpu_node_hourly
from infra.charts import DCGM_EXPORTER, KUBE_PROMETHEUS_STACK
from infra.config import Monitoring as MonitoringConfig
from infra.config import StackConfig
from infra.labels import COMPONENT, GATEWAY_SELECTOR, POOL_LABEL, SITE_LABEL
from infra.platform import Platform
from infra.workloads.namespaces import namespace

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "monitoring" / "rules"
DASHBOARDS_DIR = REPO / "monitoring" / "dashboards"

NAMESPACE = "monitoring"
RELEASE = "kube-prometheus-stack"
# fullnameOverride pins the Service names, so KEDA and users can find them.
PROMETHEUS_URL = f"http://{RELEASE}-prometheus.{NAMESPACE}.svc.cluster.local:9090"
GRAFANA_SERVICE = "grafana"
GRAFANA_SECRET = "grafana-admin"
DASHBOARD_LABEL = "grafana_dashboard"
# kube-state-metrics turns allow-listed node labels into label_<name> on kube_node_labels.
NODE_LABELS_ALLOWLIST = [POOL_LABEL, SITE_LABEL, "node.kubernetes.io/instance-type"]
POOL_LABEL_METRIC = "label_" + "".join(c if c.isalnum() else "_" for c in POOL_LABEL)
# Recording rules rendered per site from config (the rest live in monitoring/rules/).
NODE_PRICE_RECORD = "llm_platform:node_price_usd_per_hour"
BUDGET_RECORD = "llm_platform:budget_monthly_usd"
GENERATED_RECORDS = (NODE_PRICE_RECORD, BUDGET_RECORD)
DCGM_READY_SECONDS = 900


def rule_files() -> dict[str, dict]:
    """{file stem: Prometheus rule file ({groups: [...]})} from monitoring/rules/."""
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(RULES_DIR.glob("*.yaml"))}


def dashboard_files() -> dict[str, str]:
    """{file stem: dashboard JSON text} from monitoring/dashboards/."""
    return {p.stem: p.read_text() for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def pool_prices(platform: Platform) -> dict[str, float]:
    """USD per node hour of each pool on the site, spot or on-demand, at catalog prices."""
    out: dict[str, float] = {}
    for pool in (platform.system_pool, *platform.gpu_pools):
        if pool.instance is not None:
            out[pool.labels.get(POOL_LABEL, pool.name)] = pool.instance.hourly(pool.spot)
            continue
        hourly = cpu_node_hourly(platform.site.cloud, pool.instance_type, pool.spot)
        if hourly is not None:
            out[pool.labels.get(POOL_LABEL, pool.name)] = hourly
    return out


def generated_rules(prices: dict[str, float], budget: float) -> dict:
    """Facts from config as recording rules, so cost rules in PromQL can join on them."""
    rules = [
        {"record": NODE_PRICE_RECORD, "expr": f"vector({price:.6g})", "labels": {POOL_LABEL_METRIC: pool}}
        for pool, price in sorted(prices.items())
    ]
    rules.append({"record": BUDGET_RECORD, "expr": f"vector({budget:.6g})"})
    return {"groups": [{"name": "llm-platform-prices", "interval": "5m", "rules": rules}]}


def grafana_access(public: bool) -> str:
    if public:
        return f"kubectl -n {NAMESPACE} get svc {GRAFANA_SERVICE} (LoadBalancer address, port 80)"
    return f"kubectl -n {NAMESPACE} port-forward svc/{GRAFANA_SERVICE} 3000:80, then open http://localhost:3000"


def chart_values(mon: MonitoringConfig, platform: Platform) -> dict:
    system = dict(platform.system_pool.labels)
    grafana_service: dict = {"type": "LoadBalancer" if mon.grafana_public else "ClusterIP"}
    if mon.grafana_public:
        grafana_service["annotations"] = dict(platform.lb_annotations)
    return {
        "fullnameOverride": RELEASE,
        "prometheus": {
            "prometheusSpec": {
                "retention": mon.retention,
                # Prometheus drops the oldest blocks before the volume fills.
                "retentionSize": f"{int(mon.storage_gb * 0.85)}GB",
                # Select every ServiceMonitor, PodMonitor, Probe and PrometheusRule, not
                # only those carrying this release's label.
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "podMonitorSelectorNilUsesHelmValues": False,
                "ruleSelectorNilUsesHelmValues": False,
                "probeSelectorNilUsesHelmValues": False,
                "nodeSelector": system,
                "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
                "storageSpec": {
                    "volumeClaimTemplate": {
                        "spec": {
                            "storageClassName": platform.storage.rwo,
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": f"{mon.storage_gb}Gi"}},
                        }
                    }
                },
            }
        },
        "alertmanager": {"alertmanagerSpec": {"nodeSelector": system}},
        "prometheusOperator": {"nodeSelector": system},
        "kube-state-metrics": {
            "nodeSelector": system,
            "metricLabelsAllowlist": [f"nodes=[{','.join(NODE_LABELS_ALLOWLIST)}]"],
        },
        "grafana": {
            "fullnameOverride": GRAFANA_SERVICE,
            # Grafana is the one image of this chart on Docker Hub (grafana 12.11.1 values.yaml
            # image.registry: docker.io); pulled through the site's cache like vLLM.
            "image": {"registry": platform.images.docker_hub},
            "nodeSelector": system,
            "admin": {"existingSecret": GRAFANA_SECRET, "userKey": "admin-user", "passwordKey": "admin-password"},
            "service": grafana_service,
            "sidecar": {
                "dashboards": {
                    "enabled": True,
                    "label": DASHBOARD_LABEL,
                    "labelValue": "1",
                    "searchNamespace": NAMESPACE,
                }
            },
        },
    }


# Where the cloud's host driver directory appears in the exporter, the loader path into it,
# and the GPU id GKE's device plugin hands out (nvidia0, not a UUID): as in Google's own DCGM
# exporter manifest for GKE, which also runs it privileged, since GKE gives /dev/nvidia* only
# to containers that request a GPU
# (GoogleCloudPlatform/prometheus-engine@2ffde4e:examples/nvidia-dcgm/exporter.yaml, read 2026-12-01).
DCGM_DRIVER_VOLUME = "nvidia-install-dir-host"
DCGM_DRIVER_MOUNT = "/usr/local/nvidia"
DCGM_HOST_DRIVER_ENV = (
    {"name": "LD_LIBRARY_PATH", "value": f"{DCGM_DRIVER_MOUNT}/lib64"},
    {"name": "DCGM_EXPORTER_KUBERNETES_GPU_ID_TYPE", "value": "device-name"},
)
# A list in values replaces the chart's whole list: its own mount of the metrics ConfigMap
# goes first again (NVIDIA/dcgm-exporter@4.5.3-4.8.2:deployment/values.yaml extraVolumeMounts).
DCGM_CHART_MOUNTS = (
    {
        "name": "exporter-metrics-volume",
        "mountPath": "/etc/dcgm-exporter/default-counters.csv",
        "subPath": "default-counters.csv",
    },
)


def dcgm_values(platform: Platform) -> dict:
    taints = sorted({t for pool in platform.gpu_pools for t in pool.taints}, key=lambda t: t.key)
    values: dict = {
        "tolerations": [{"key": t.key, "operator": "Exists", "effect": t.effect} for t in taints],
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "serviceMonitor": {"enabled": True, "interval": "15s"},
    }
    if platform.gpu_driver_host_dir:
        values["extraHostVolumes"] = [{"name": DCGM_DRIVER_VOLUME, "hostPath": platform.gpu_driver_host_dir}]
        values["extraVolumeMounts"] = [
            *(dict(m) for m in DCGM_CHART_MOUNTS),
            {"name": DCGM_DRIVER_VOLUME, "mountPath": DCGM_DRIVER_MOUNT},
        ]
        values["extraEnv"] = [dict(e) for e in DCGM_HOST_DRIVER_ENV]
        # Merged into the chart's securityContext, whose allowPrivilegeEscalation: false the
        # API server rejects beside privileged: true.
        values["securityContext"] = {"privileged": True, "allowPrivilegeEscalation": True}
    return values


class Monitoring(pulumi.ComponentResource):
    """One site's monitoring; `prometheus_url` is where KEDA reads its triggers."""

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        platform: Platform,
        workloads_namespace: str,
        opts: pulumi.ResourceOptions,
    ):
        super().__init__("llm-platform:workloads:Monitoring", name, None, opts)
        mon = cfg.monitoring
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=platform.provider)
        # node-exporter and the DCGM exporter read host paths and the host network.
        ns = namespace(f"{name}-ns", NAMESPACE, "privileged", k8s_opts)
        in_ns = pulumi.ResourceOptions(parent=self, provider=platform.provider, depends_on=[ns])
        password = random.RandomPassword(
            f"{name}-grafana-admin", length=32, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        admin = k8s.core.v1.Secret(
            f"{name}-grafana-admin",
            metadata={"name": GRAFANA_SECRET, "namespace": NAMESPACE},
            type="Opaque",
            string_data={"admin-user": "admin", "admin-password": pulumi.Output.secret(password.result)},
            opts=in_ns,
        )
        self.release = KUBE_PROMETHEUS_STACK.release(
            f"{name}-kube-prometheus-stack",
            RELEASE,
            namespace=NAMESPACE,
            values=chart_values(mon, platform),
            opts=pulumi.ResourceOptions(
                parent=self, provider=platform.provider, depends_on=[ns, admin, *platform.ready]
            ),
        )
        # CustomResources need the chart's CRDs first.
        after_crds = pulumi.ResourceOptions(parent=self, provider=platform.provider, depends_on=[ns, self.release])
        DCGM_EXPORTER.release(
            f"{name}-dcgm-exporter",
            "dcgm-exporter",
            namespace=NAMESPACE,
            values=dcgm_values(platform),
            # The DaemonSet is ready only once every GPU node has its driver (GKE installs it
            # after the node joins); Helm's default wait of 300 s is too short for that.
            timeout=DCGM_READY_SECONDS,
            opts=after_crds,
        )

        def pod_monitor(resource: str, monitor: str, selector: dict[str, str], port: str) -> None:
            k8s.apiextensions.CustomResource(
                f"{name}-{resource}",
                api_version="monitoring.coreos.com/v1",
                kind="PodMonitor",
                metadata={"name": monitor, "namespace": NAMESPACE},
                spec={
                    "namespaceSelector": {"matchNames": [workloads_namespace]},
                    "selector": {"matchLabels": selector},
                    "podMetricsEndpoints": [{"port": port, "path": "/metrics", "interval": "15s"}],
                },
                opts=after_crds,
            )

        # Per pod, not per Service: the vLLM Service is headless and each replica's queue matters.
        pod_monitor("vllm-monitor", "vllm", {COMPONENT: "vllm"}, "http")
        # The gateway serves its metrics on their own port, off the load balancer (gateway.py).
        pod_monitor("gateway-monitor", "gateway", dict(GATEWAY_SELECTOR), "metrics")

        def prometheus_rule(stem: str, content: dict) -> None:
            k8s.apiextensions.CustomResource(
                f"{name}-rules-{stem}",
                api_version="monitoring.coreos.com/v1",
                kind="PrometheusRule",
                metadata={"name": f"llm-platform-{stem}", "namespace": NAMESPACE},
                spec={"groups": content["groups"]},
                opts=after_crds,
            )

        for stem, content in rule_files().items():
            prometheus_rule(stem, content)
        prometheus_rule("prices", generated_rules(pool_prices(platform), cfg.site_budget(platform.site.name)))

        for stem, text in dashboard_files().items():
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard-{stem}",
                metadata={"name": f"dashboard-{stem}", "namespace": NAMESPACE, "labels": {DASHBOARD_LABEL: "1"}},
                data={f"{stem}.json": json.dumps(json.loads(text), separators=(",", ":"))},
                opts=in_ns,
            )

        self.prometheus_url = PROMETHEUS_URL
        self.grafana = grafana_access(mon.grafana_public)
        self.grafana_password = pulumi.Output.secret(password.result)
        self.register_outputs({"grafana": self.grafana, "prometheusUrl": PROMETHEUS_URL})

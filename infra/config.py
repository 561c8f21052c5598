"""The typed stack config: parsed once, frozen, and checked before any resource exists.

Stack files hold structured values under the `llm-platform:` namespace (budget, tags,
models, gateway, images, sites). Secrets (`hfToken`, `apiKeys`, `providerKeys`,
`dockerHubToken`) are read separately (infra/secrets.py) as Pulumi secrets and never enter these
models; of `providerKeys` only the provider names are read here, to check every provider has a key.

Every failure is a `ConfigError` whose text is one line: the key path as it is written in
`Pulumi.<stack>.yaml` and what would be valid.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pulumi.runtime.config import CONFIG, get_config_env
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from infra.catalog import CLOUDS, catalog
from infra.catalog.vllm_flags import vllm_cli

PROJECT = "llm-platform"
# Keys in the project namespace that hold secrets; everything else must be a known key.
SECRET_KEYS = ("hfToken", "apiKeys", "providerKeys", "dockerHubToken")
# Secret keys this project no longer reads, and what took their place.
RETIRED_KEYS = {
    "fallbackApiKey": "replaced by providerKeys: `pulumi config rm fallbackApiKey`, then "
    "`pulumi config set --secret --path 'providerKeys.<provider>' <api key>` for each of gateway.providers",
}
STRUCTURED_KEYS = ("budget", "tags", "models", "gateway", "images", "monitoring", "sites")

Slug = Annotated[str, Field(pattern=r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$")]
Email = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Percent = Annotated[float, Field(gt=0, le=1000)]


class ConfigError(Exception):
    """A bad stack config value: `path: what is wrong and what is allowed`."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class MinMax(_Model):
    min: int = Field(ge=0, description="Smallest count; 0 lets the pool or Deployment scale to zero.")
    max: int = Field(ge=1, description="Largest count.")
    expected: int | None = Field(
        default=None, ge=0, description="Typical count, for the cost estimate; defaults to min."
    )

    @model_validator(mode="after")
    def _ordered(self) -> MinMax:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        if self.expected is not None and not self.min <= self.expected <= self.max:
            raise ValueError(f"expected ({self.expected}) must be within min..max ({self.min}..{self.max})")
        return self

    @property
    def typical(self) -> int:
        return self.min if self.expected is None else self.expected


class Budget(_Model):
    monthly_amount: float = Field(gt=0, description="Monthly spend limit for the whole stack.")
    currency: Literal["USD"] = "USD"
    actual_thresholds_pct: list[Percent] = Field(
        default=[80.0, 100.0], min_length=1, description="Alert when actual spend passes these percentages."
    )
    forecast_thresholds_pct: list[Percent] = Field(
        default=[100.0], min_length=1, description="Alert when forecast spend passes these percentages."
    )
    emails: list[Email] = Field(min_length=1, description="Who gets budget alerts.")
    by_cloud: dict[Literal["aws", "gcp", "azure"], float] = Field(
        default_factory=dict,
        description="Per-cloud share of monthlyAmount; clouds not listed split the rest equally.",
    )


class ModelSpec(_Model):
    name: Slug = Field(description="Served model name clients ask for (OpenAI `model`).")
    hf_repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$", description="Hugging Face repo id, owner/name.")
    revision: str = Field(default="main", min_length=1, description="Hub revision (commit sha, tag or branch).")
    params_billion: float = Field(gt=0, description="Parameter count in billions, for GPU-fit checks.")
    dtype: Literal["auto", "float16", "bfloat16"] = "auto"
    quantization: Literal["awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors"] | None = None
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs one replica spans.")
    max_model_len: int = Field(ge=256, le=1_048_576, description="Context length vLLM reserves KV cache for.")
    gpu_memory_utilization: float = Field(default=0.9, gt=0.1, le=0.98)
    kv_bytes_per_token: int | None = Field(
        default=None,
        ge=1,
        description="KV cache bytes per token (2 x layers x KV heads x head dim x dtype bytes); "
        "defaults to an estimate from paramsBillion.",
    )
    gpu_pool: Slug = Field(description="GPU pool name (in each site that serves it) the replicas run on.")
    replicas: MinMax = Field(description="vLLM replicas per site; min 0 scales to zero.")
    extra_args: list[str] = Field(default_factory=list, description="More `vllm serve` flags, verbatim.")

    @field_validator("extra_args")
    @classmethod
    def _flags_only(cls, args: list[str]) -> list[str]:
        # Read as vLLM's own parser reads them (infra/catalog/vllm_flags.py), so an alias or
        # the underscore spelling of a derived flag is caught too.
        for option in vllm_cli().read(args):
            if option.flag.dest in DERIVED_DESTS:
                raise ValueError(f"{option.text} is set from the model's own keys; remove it")
            if option.flag.dest in SECRET_DESTS:
                raise ValueError(f"{option.text} would put a secret in the pod spec; {SECRET_DESTS[option.flag.dest]}")
        return args


# `vllm serve` settings the command derives from the model's keys and the pod
# (infra/workloads/vllm_args.py; a test holds the two together). Prefix caching stays the
# user's to turn off.
DERIVED_DESTS = frozenset(
    {
        "model",
        "host",
        "port",
        "served_model_name",
        "revision",
        "dtype",
        "tensor_parallel_size",
        "max_model_len",
        "gpu_memory_utilization",
        "download_dir",
        "quantization",
        "kv_events_config",
    }
)
# Settings that hold a secret: a flag's value is plain text in the Deployment.
SECRET_DESTS = {
    "hf_token": "set the hfToken secret instead (it reaches vLLM as HF_TOKEN from a Kubernetes Secret)",
    "api_key": "only the gateway reaches vLLM (a NetworkPolicy), and clients authenticate at the gateway",
}


class RateLimits(_Model):
    requests_per_minute: int = Field(default=600, ge=1)
    tokens_per_minute: int = Field(default=200_000, ge=1)


# The gateway's names for providers and rules, and a key's tier (app/gateway/hybrid.py, keyfile.py):
# a stack that passes here renders settings the gateway accepts (tests/infra/test_gateway_env.py).
_NAME = r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$"
_TIER = r"^[a-z0-9][a-z0-9_-]{0,31}$"
# `<provider>[:<model>]`; no comma in the model, since GATEWAY_FALLBACK_CHAIN is comma-separated.
_HOP = re.compile(r"(?P<provider>[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?)(:(?P<model>[^\s,]+))?")


def _hop(text: str) -> str:
    if not _HOP.fullmatch(text):
        raise ValueError(f"{text!r} is not <provider> or <provider>:<model>, like openai:gpt-4o-mini")
    return text


def hop_provider(hop: str) -> str:
    """The provider a chain hop names: `openai` of `openai:gpt-4o-mini`."""
    return hop.partition(":")[0]


Hop = Annotated[str, AfterValidator(_hop)]


class Provider(_Model):
    name: str = Field(
        pattern=_NAME,
        description="Provider name routes and the fallback chain use; its API key is providerKeys.<name>.",
    )
    base_url: str = Field(description="OpenAI-compatible base URL, https, ending in /v1 (https://api.openai.com/v1).")

    @field_validator("base_url")
    @classmethod
    def _v1(cls, url: str) -> str:
        if not re.fullmatch(r"https://[^\s/]+(/\S*)?/v1", url):
            raise ValueError(f"{url!r} must be an https base URL ending in /v1, like https://api.openai.com/v1")
        return url


class RouteMatch(_Model):
    """What a request must have for its route to apply; every condition given must hold."""

    tiers: list[Annotated[str, Field(pattern=_TIER)]] | None = Field(
        default=None, min_length=1, description="API key tiers (the key file's tier=)."
    )
    models: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, min_length=1, description="Models or aliases the client asks for (OpenAI `model`)."
    )
    tasks: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, min_length=1, description="Values of the request's x-task header."
    )
    min_prompt_tokens: int | None = Field(default=None, ge=0, description="Estimated prompt tokens at least this.")
    max_prompt_tokens: int | None = Field(default=None, ge=0, description="Estimated prompt tokens at most this.")
    max_ttft_budget_ms: float | None = Field(
        default=None,
        gt=0,
        description="Requests whose TTFT budget (x-ttft-budget-ms header, else the key's ttft_budget_ms=) is at most "
        "this; a request without a budget does not match.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> RouteMatch:
        lo, hi = self.min_prompt_tokens, self.max_prompt_tokens
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"minPromptTokens ({lo}) is above maxPromptTokens ({hi})")
        return self


class Route(_Model):
    """A hybrid routing rule; the gateway applies the first that matches."""

    name: str = Field(pattern=_NAME, description="Rule name, in the gateway's metrics and logs.")
    match: RouteMatch = Field(default=RouteMatch(), description="Conditions; none matches every request.")
    model: Annotated[str, Field(min_length=1)] | None = Field(
        default=None,
        description="A model of the stack's models[] that serves the request (the request's model is rewritten: "
        "an alias); every site must serve it.",
    )
    providers: list[Hop] = Field(
        default_factory=list,
        description="Hosted chain, `<provider>[:<model>]` in order: after the model (when no replica can take it "
        "or its predicted TTFT is over budget), or instead of it.",
    )

    @model_validator(mode="after")
    def _goes_somewhere(self) -> Route:
        if self.model is None and not self.providers:
            raise ValueError(f"route {self.name!r} sets neither model nor providers; give one or both")
        return self


class Gateway(_Model):
    replicas: MinMax = MinMax(min=2, max=6)
    rate_limits: RateLimits = RateLimits()
    redis_fail_mode: Literal["open", "closed"] = "open"
    hold_timeout_seconds: float = Field(
        default=300,
        ge=0,
        le=3600,
        description="How long a request for a model with no ready replica waits (scale from zero: node + model load).",
    )
    providers: list[Provider] = Field(
        default_factory=list, description="Hosted OpenAI-compatible APIs; each needs its key in providerKeys."
    )
    fallback: list[Hop] = Field(
        default_factory=list,
        description="The fallback chain, `<provider>[:<model>]` tried in order when no replica can take a request "
        "and no route gives its own chain.",
    )
    routes: list[Route] = Field(default_factory=list, description="Hybrid routing rules; the first that matches.")
    prefill_tokens_per_second: float = Field(
        default=10_000.0,
        gt=0,
        description="Prompt tokens a replica prefills per second, for the gateway's predicted time to first token.",
    )
    cpu: str = Field(default="1", pattern=r"^\d+(\.\d+)?m?$")
    memory: str = Field(default="1Gi", pattern=r"^\d+(Mi|Gi)$")

    @field_validator("fallback", mode="before")
    @classmethod
    def _chain(cls, value: object) -> object:
        if isinstance(value, dict) and "baseUrl" in value:
            raise ValueError(
                "{baseUrl} is replaced by a chain: list the provider under gateway.providers as {name, baseUrl} "
                "and name it here, e.g. fallback: [openai]"
            )
        return value


class Images(_Model):
    gateway_tag: str = Field(default="0.1.0", pattern=r"^[\w][\w.-]{0,127}$")
    docker_hub_user: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]{4,30}$",
        description="Docker Hub user of the dockerHubToken secret; AWS and Azure sites need both (their Docker Hub "
        "caches sign in), GCP sites may use them.",
    )
    vllm: str = Field(default="vllm/vllm-openai:v0.33.0", pattern=r"^\S+:[\w][\w.-]*$")

    @field_validator("vllm")
    @classmethod
    def _pinned(cls, image: str) -> str:
        if image.endswith(":latest"):
            raise ValueError("pin a version tag, not latest")
        return image


class Monitoring(_Model):
    """Prometheus, Alertmanager and Grafana on every site whose `monitoring` is true."""

    retention: str = Field(
        default="15d", pattern=r"^[1-9][0-9]*(h|d|w|y)$", description="How long Prometheus keeps samples, e.g. 15d."
    )
    storage_gb: int = Field(default=50, ge=10, le=4000, description="Prometheus volume size in GB, per site.")
    grafana_public: bool = Field(
        default=False,
        description="Expose Grafana through a LoadBalancer Service; false keeps it reachable only inside the cluster.",
    )


class SystemPool(_Model):
    instance_type: str = Field(min_length=1)
    nodes: MinMax = MinMax(min=2, max=4)
    disk_gb: int = Field(default=50, ge=20, le=2000)


class GpuPool(_Model):
    name: Slug
    instance_type: str = Field(description="A GPU instance type from the catalog for the site's cloud.")
    nodes: MinMax
    spot: bool = False
    disk_gb: int = Field(default=200, ge=50, le=4000)


class Redis(_Model):
    size: Literal["small", "medium", "large"] = "small"
    replicas: int = Field(default=0, ge=0, le=5, description="Read replicas for failover; 0 in dev.")


class GcpSite(_Model):
    """What only a GCP site needs: the project it builds in and the billing account the
    stack's budget watches."""

    project: str = Field(pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", description="GCP project id the site builds in.")
    billing_account: str = Field(
        pattern=r"^[0-9A-F]{6}-[0-9A-F]{6}-[0-9A-F]{6}$",
        description="Billing account (XXXXXX-XXXXXX-XXXXXX) paying for the project; the GCP budget lives on it.",
    )
    gpu_zones: list[Annotated[str, Field(pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")]] = Field(
        default_factory=list,
        description=(
            "Zones of the region for the GPU node pools (where the GPU type has capacity); empty = GKE's default zones."
        ),
    )


_UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class AzureSite(_Model):
    """What only an Azure site needs; without it the ambient `az login` subscription is used."""

    subscription_id: str | None = Field(
        default=None, pattern=_UUID, description="Subscription the site (and the Azure budget) builds in."
    )
    admin_group_object_ids: list[Annotated[str, Field(pattern=_UUID)]] = Field(
        default_factory=list, description="Entra ID groups that get cluster-admin on AKS through Azure RBAC."
    )
    deployer_principal_type: Literal["User", "ServicePrincipal", "Group"] = Field(
        default="User",
        description="What signs in to run `pulumi up` (it gets AKS RBAC Cluster Admin to deploy the workloads).",
    )


class AwsSite(_Model):
    """What only an AWS site needs."""

    admin_principal_arns: list[
        Annotated[str, Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:(role|user)/[\w+=,.@/-]+$")]
    ] = Field(
        default_factory=list,
        description="IAM roles or users (a CI role, an admin role) that get cluster admin through EKS access entries, "
        "beside the identity that runs `pulumi up`.",
    )


class Site(_Model):
    name: Slug
    cloud: Literal["aws", "gcp", "azure"]
    region: str = Field(pattern=r"^[a-z]+(-[a-z0-9]+)*$", description="Cloud region, e.g. us-east-1.")
    kubernetes_version: str = Field(
        default="1.35",
        pattern=r"^1\.\d{2}$",
        description="Kubernetes minor; policy kubernetes-version-supported checks it against the cloud's support "
        "calendar and the chart pins (upstream/kubernetes/support.yaml).",
    )
    network_cidr: str = "10.0.0.0/16"
    api_allowed_cidrs: list[str] = Field(
        default_factory=list,
        description="CIDRs allowed to reach the Kubernetes API; empty makes the endpoint private only.",
    )
    nat_per_zone: bool = False
    system_pool: SystemPool
    gpu_pools: list[GpuPool] = Field(min_length=1)
    redis: Redis = Redis()
    monitoring: bool = True
    models: list[Slug] = Field(min_length=1, description="Names of the stack's models served here.")
    aws: AwsSite | None = Field(default=None, description="Optional on cloud aws sites: extra cluster admins.")
    gcp: GcpSite | None = Field(default=None, description="Required on cloud gcp sites: project and billing account.")
    azure: AzureSite | None = Field(
        default=None, description="Optional on cloud azure sites: subscription, admin groups."
    )

    @field_validator("network_cidr")
    @classmethod
    def _network(cls, value: str) -> str:
        try:
            net = ipaddress.ip_network(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR like 10.0.0.0/16") from None
        if not net.is_private or net.prefixlen > 20:
            raise ValueError(f"{value!r} must be a private range of /20 or larger")
        return value

    @field_validator("api_allowed_cidrs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                net = ipaddress.ip_network(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a CIDR like 203.0.113.0/24") from None
            if net.prefixlen == 0:
                raise ValueError(f"{value!r} opens the API to the whole internet; list your own ranges")
        return values


class StackConfig(_Model):
    budget: Budget
    tags: dict[str, str] = Field(default_factory=dict, description="Cost tags (labels on GCP) on every resource.")
    models: list[ModelSpec] = Field(min_length=1)
    gateway: Gateway = Gateway()
    images: Images = Images()
    monitoring: Monitoring = Monitoring()
    sites: list[Site] = Field(min_length=1)

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: dict[str, str]) -> dict[str, str]:
        # The strictest of the three clouds: GCP labels (lowercase, digits, _ and -).
        for key, value in tags.items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key):
                raise ValueError(f"tag key {key!r} must match [a-z][a-z0-9_-]{{0,62}}")
            if not re.fullmatch(r"[a-z0-9_-]{0,63}", value):
                raise ValueError(f"tag {key}={value!r}: values must match [a-z0-9_-]{{0,63}}")
        return tags

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)

    def clouds(self) -> list[str]:
        return sorted({site.cloud for site in self.sites}, key=CLOUDS.index)

    def budget_by_cloud(self) -> dict[str, float]:
        """Monthly budget per cloud: byCloud shares first, the rest split equally over the
        clouds byCloud leaves out. Every reader of a budget (the clouds' budget resources, the
        sites' Prometheus budget records) takes its figure from here."""
        explicit = self.budget.by_cloud
        rest = [c for c in self.clouds() if c not in explicit]
        left = self.budget.monthly_amount - sum(explicit.values())
        return {c: explicit.get(c, left / len(rest) if rest else 0.0) for c in self.clouds()}

    def site_budget(self, site_name: str) -> float:
        """A site's share: its cloud's budget split equally over that cloud's sites."""
        cloud = next(s.cloud for s in self.sites if s.name == site_name)
        return self.budget_by_cloud()[cloud] / sum(1 for s in self.sites if s.cloud == cloud)


def _check_references(cfg: StackConfig) -> None:
    """Cross-field rules pydantic field validators cannot see."""
    _unique([s.name for s in cfg.sites], "sites", "name")
    _unique([m.name for m in cfg.models], "models", "name")
    served = {name for site in cfg.sites for name in site.models}
    for i, model in enumerate(cfg.models):
        if model.name not in served:
            raise ConfigError(
                f"models[{i}]", f"model {model.name!r} is served by no site; add it to some sites[].models"
            )
    if sum(cfg.budget.by_cloud.values()) > cfg.budget.monthly_amount:
        raise ConfigError("budget.byCloud", "the shares add up to more than monthlyAmount")
    for cloud in cfg.budget.by_cloud:
        if cloud not in cfg.clouds():
            raise ConfigError(
                f"budget.byCloud.{cloud}", f"no site uses {cloud}; clouds in use: {', '.join(cfg.clouds())}"
            )

    _check_cloud_blocks(cfg)
    _check_gateway(cfg)
    model_names = [m.name for m in cfg.models]
    for s, site in enumerate(cfg.sites):
        at = f"sites[{s}]"
        known = catalog(site.cloud).instances
        _unique([p.name for p in site.gpu_pools], f"{at}.gpuPools", "name")
        for p, pool in enumerate(site.gpu_pools):
            if pool.instance_type not in known:
                raise ConfigError(
                    f"{at}.gpuPools[{p}].instanceType",
                    f"unknown {site.cloud} GPU type {pool.instance_type!r}; known: {', '.join(known)}",
                )
        pools = {pool.name: pool for pool in site.gpu_pools}
        for m, name in enumerate(site.models):
            if name not in model_names:
                raise ConfigError(f"{at}.models[{m}]", f"unknown model {name!r}; models: {', '.join(model_names)}")
            model = cfg.model(name)
            if model.gpu_pool not in pools:
                raise ConfigError(
                    f"{at}.models[{m}]",
                    f"model {name!r} runs on gpuPool {model.gpu_pool!r}, which this site lacks; "
                    f"pools here: {', '.join(pools)}",
                )
            gpus = known[pools[model.gpu_pool].instance_type].gpus
            tp = model.tensor_parallel_size
            if tp > gpus or gpus % tp:
                valid = [d for d in range(1, gpus + 1) if gpus % d == 0]
                raise ConfigError(
                    f"models[{model_names.index(name)}].tensorParallelSize",
                    f"{tp} must divide the {gpus} GPUs per node of {pools[model.gpu_pool].instance_type} "
                    f"in {site.name}; valid: {', '.join(map(str, valid))}",
                )


def _check_gateway(cfg: StackConfig) -> None:
    """Routes and the fallback chain name configured providers and models every site serves."""
    gw = cfg.gateway
    _unique([p.name for p in gw.providers], "gateway.providers", "name")
    _unique([r.name for r in gw.routes], "gateway.routes", "name")
    names = [p.name for p in gw.providers]
    known = f"(providers: {', '.join(names)})" if names else "(no gateway.providers configured)"

    def check_chain(chain: list[str], at: str) -> None:
        for i, hop in enumerate(chain):
            if hop_provider(hop) not in names:
                raise ConfigError(f"{at}[{i}]", f"unknown provider {hop_provider(hop)!r} {known}")

    check_chain(gw.fallback, "gateway.fallback")
    model_names = [m.name for m in cfg.models]
    for r, route in enumerate(gw.routes):
        at = f"gateway.routes[{r}]"
        check_chain(route.providers, f"{at}.providers")
        if route.model is None:
            continue
        if route.model not in model_names:
            raise ConfigError(f"{at}.model", f"unknown model {route.model!r}; models: {', '.join(model_names)}")
        # Every site's gateway gets every route, and a gateway refuses a route to a model it lacks.
        for site in cfg.sites:
            if route.model not in site.models:
                raise ConfigError(
                    f"{at}.model",
                    f"model {route.model!r} is not served by site {site.name!r} (its models: "
                    f"{', '.join(site.models)}); every site's gateway applies every route",
                )


def provider_key_command(name: str) -> str:
    return f"pulumi config set --secret --path 'providerKeys.{name}' <api key>"


_KEYS_SHAPE = f"must be an object of provider name to API key; set each with `{provider_key_command('<provider>')}`"


def _check_provider_keys(cfg: StackConfig, keys: object) -> None:
    """Every hosted provider has its key in the providerKeys secret (of which only names are seen)."""
    names = [p.name for p in cfg.gateway.providers]
    if not names:
        return
    if keys is None:
        raise ConfigError(
            "providerKeys",
            "not set, and gateway.providers needs an API key for each provider; "
            f"set each with `{provider_key_command(names[0])}`",
        )
    if not isinstance(keys, Mapping):
        raise ConfigError("providerKeys", _KEYS_SHAPE)
    for i, name in enumerate(names):
        if name not in keys:
            raise ConfigError(
                f"providerKeys.{name}",
                f"no API key for gateway.providers[{i}] ({name}); set it with `{provider_key_command(name)}`",
            )


# Azure allows five notifications per budget; AKS pool names are 1-12 lowercase alphanumerics.
AZURE_MAX_BUDGET_NOTIFICATIONS = 5


def azure_pool_name(name: str) -> str:
    """The AKS agent pool name for a pool: our slug without hyphens, at most 12 characters."""
    return re.sub(r"[^a-z0-9]", "", name)[:12]


def _check_cloud_blocks(cfg: StackConfig) -> None:
    """Each cloud's own block belongs on that cloud's sites only, and each cloud's limits hold."""
    for s, site in enumerate(cfg.sites):
        at = f"sites[{s}]"
        for cloud in ("aws", "gcp", "azure"):
            if getattr(site, cloud) is not None and site.cloud != cloud:
                raise ConfigError(f"{at}.{cloud}", f"only for cloud {cloud} sites; this site is {site.cloud}")
        if site.cloud == "gcp" and site.gcp is None:
            raise ConfigError(
                f"{at}.gcp", "required for cloud gcp: {project: <project id>, billingAccount: XXXXXX-XXXXXX-XXXXXX}"
            )
        if site.cloud == "gcp" and site.gcp is not None:
            for z, zone in enumerate(site.gcp.gpu_zones):
                if not zone.startswith(site.region + "-"):
                    raise ConfigError(f"{at}.gcp.gpuZones[{z}]", f"{zone!r} is not a zone of region {site.region}")
        if site.cloud == "azure":
            seen: dict[str, str] = {}
            for p, pool in enumerate(site.gpu_pools):
                short = azure_pool_name(pool.name)
                if short in seen or short == "system":
                    other = seen.get(short, "system")
                    raise ConfigError(
                        f"{at}.gpuPools[{p}].name",
                        f"on Azure {pool.name!r} becomes agent pool {short!r}, as {other!r} does; "
                        "pick names that differ in their first 12 letters and digits",
                    )
                seen[short] = pool.name
    if "azure" in cfg.clouds():
        count = len(cfg.budget.actual_thresholds_pct) + len(cfg.budget.forecast_thresholds_pct)
        if count > AZURE_MAX_BUDGET_NOTIFICATIONS:
            raise ConfigError(
                "budget.actualThresholdsPct",
                f"Azure budgets allow {AZURE_MAX_BUDGET_NOTIFICATIONS} notifications; actual and forecast thresholds "
                f"add up to {count}",
            )


def _unique(names: list[str], path: str, key: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"{path}[{i}].{key}", f"duplicate {key} {name!r}; each must be unique")
        seen.add(name)


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key; check the spelling against README's config reference"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"got {error['input']!r}; allowed: {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return f"got {error['input']!r}; must match {ctx.get('pattern')}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']} (got {error['input']!r})"


def parse(raw: Mapping[str, Any]) -> StackConfig:
    """Validate a mapping of project keys (without the namespace) into a StackConfig."""
    for key, instead in RETIRED_KEYS.items():
        if key in raw:
            raise ConfigError(f"{PROJECT}:{key}", instead)
    unknown = sorted(set(raw) - set(STRUCTURED_KEYS) - set(SECRET_KEYS))
    if unknown:
        raise ConfigError(
            f"{PROJECT}:{unknown[0]}",
            f"unknown config key; known: {', '.join(STRUCTURED_KEYS + SECRET_KEYS)}",
        )
    try:
        cfg = StackConfig.model_validate({k: v for k, v in raw.items() if k in STRUCTURED_KEYS})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(_path(error["loc"]), _describe(error)) from None
    _check_references(cfg)
    _check_provider_keys(cfg, raw.get("providerKeys"))
    return cfg


def _secret_names(key: str, value: object) -> dict[str, None]:
    """The names of a secret object (provider -> API key), for checks that need no value."""
    try:
        obj = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        raise ConfigError(key, _KEYS_SHAPE)
    for name, secret in obj.items():
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"{key}.{name}", "must be the provider's API key, a non-empty string")
    return dict.fromkeys(obj)


def from_pulumi() -> StackConfig:
    """Read the project's keys from the running Pulumi program's config."""
    # The engine hands config over either as the runtime's config map or as PULUMI_CONFIG.
    raw: dict[str, Any] = {}
    for full_key, value in {**get_config_env(), **CONFIG.get()}.items():
        namespace, _, key = full_key.partition(":")
        if namespace != PROJECT:
            continue
        if key == "providerKeys":
            raw[key] = _secret_names(key, value)
            continue
        if key in SECRET_KEYS:
            raw[key] = None
            continue
        try:
            raw[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            raw[key] = value
    return parse(raw)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the structured keys, as written in a stack file (camelCase)."""
    schema = StackConfig.model_json_schema(by_alias=True)
    schema["title"] = "llm-platform stack config (values under the llm-platform: namespace)"
    return schema

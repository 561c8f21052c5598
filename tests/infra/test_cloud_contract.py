"""The three cloud modules keep one contract: what the site skeleton in infra/platform reads,
and components that take (name, args, opts) with the shared args types."""

from __future__ import annotations

import inspect
import types
import typing

import pytest

import infra.platform as platform
from infra.platform import aws, azure, gcp

MODULES = {"aws": aws, "gcp": gcp, "azure": azure}
COMPONENTS = {
    "Network": platform.NetworkArgs,
    "Cluster": platform.ClusterArgs,
    "NodeGroup": platform.NodeGroupArgs,
    "Redis": platform.RedisArgs,
    "Registry": platform.RegistryArgs,
}


def contract_breaches(module: types.ModuleType) -> list[str]:
    """Where a cloud module departs from `CloudModule` and the component contract."""
    out = []
    protocol = platform.CloudModule
    for name in typing.get_type_hints(protocol, vars(platform)):
        if not hasattr(module, name):
            out.append(f"no constant {name}")
    for name, member in vars(protocol).items():
        if not inspect.isfunction(member) or name.startswith("_"):
            continue
        mine = getattr(module, name, None)
        if not inspect.isfunction(mine):
            out.append(f"no function {name}")
            continue
        want = [p for p in inspect.signature(member).parameters if p != "self"]
        have = list(inspect.signature(mine).parameters)
        if have != want:
            out.append(f"{name}{tuple(have)} instead of {name}{tuple(want)}")
    for cls_name, shared in COMPONENTS.items():
        cls = getattr(module, cls_name, None)
        if cls is None:
            out.append(f"no component {cls_name}")
            continue
        params = list(inspect.signature(cls.__init__).parameters.values())
        if [p.name for p in params] != ["self", "name", "args", "opts"]:
            out.append(f"{cls_name}({', '.join(p.name for p in params[1:])}) instead of {cls_name}(name, args, opts)")
            continue
        annotation = eval(params[2].annotation, vars(module))  # the module's own names, as Python resolves them
        origin = typing.get_origin(annotation) or annotation
        if not (isinstance(origin, type) and issubclass(origin, shared)):
            out.append(f"{cls_name} takes {params[2].annotation}, not a {shared.__name__}")
    return out


@pytest.mark.parametrize("cloud", sorted(MODULES))
def test_each_cloud_module_keeps_the_contract(cloud):
    assert contract_breaches(MODULES[cloud]) == []


def test_a_module_that_departs_from_the_contract_is_named():
    """Negative control: a module missing a function, with a renamed parameter, and with a
    component of the old shape is reported on each count."""
    broken = types.ModuleType("broken")
    vars(broken).update({k: v for k, v in vars(aws).items() if not k.startswith("__")})
    del broken.build_addons

    def provider(name, site, labels, opts): ...

    class Redis:
        def __init__(self, name, site, tags, network, cluster, opts): ...

    broken.provider, broken.Redis = provider, Redis
    breaches = contract_breaches(broken)
    assert "no function build_addons" in breaches
    assert any(b.startswith("provider(") for b in breaches)
    assert any(b.startswith("Redis(name, site, tags") for b in breaches)


SITE_PARTS = {"Network", "Cluster", "NodeGroup", "Redis", "Registry"}


def test_every_site_is_built_of_the_same_parts(graphs):
    """Per site, the recorded components are the contract's, whatever the cloud; only EKS adds
    its ClusterAddons (what GKE and AKS build in)."""
    seen = set()
    for graph in graphs.values():
        for site in (r for r in graph if r.type in {f"llm-platform:{c}:Site" for c in MODULES}):
            cloud = site.type.split(":")[1]
            kinds = {r.type.split(":")[2] for r in graph if r.parent == site.urn and r.type.startswith("llm-platform:")}
            extra = {"ClusterAddons"} if cloud == "aws" else set()
            assert kinds == SITE_PARTS | extra, f"{site.name} ({cloud}): {sorted(kinds)}"
            seen.add(cloud)
    assert seen == set(MODULES), f"shipped stacks cover {sorted(seen)}"

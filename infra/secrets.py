"""Secret stack config, read once as Pulumi secrets and handed to the layers that need them.

Set with `pulumi config set --secret <key> <value>`, or one entry of an object with
`pulumi config set --secret --path '<key>.<name>' <value>` (apiKeys, providerKeys); each stays an
`Output` secret end to end.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi


@dataclass(frozen=True)
class Secrets:
    """Secret config values, each a Pulumi secret Output, or None where unset."""

    hf_token: pulumi.Output[str] | None
    api_keys: pulumi.Output[dict] | None  # key id -> key
    provider_keys: pulumi.Output[dict] | None  # hosted provider name -> API key
    # A Docker Hub access token, for the sites' Docker Hub caches: ECR's pull-through cache and
    # ACR's artifact cache must sign in; Artifact Registry's remote repository may.
    docker_hub_token: pulumi.Output[str] | None = None


def from_pulumi() -> Secrets:
    conf = pulumi.Config()
    return Secrets(
        hf_token=conf.get_secret("hfToken"),
        api_keys=conf.get_secret_object("apiKeys"),
        provider_keys=conf.get_secret_object("providerKeys"),
        docker_hub_token=conf.get_secret("dockerHubToken"),
    )

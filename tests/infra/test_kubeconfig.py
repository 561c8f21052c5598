"""The kubeconfig every cloud hands the Kubernetes provider: exec sign-in, no stored token."""

from __future__ import annotations

import json

from infra.platform import exec_kubeconfig


def test_exec_kubeconfig_is_a_complete_one_cluster_config():
    doc = json.loads(
        exec_kubeconfig("c1", "https://api.example", "Q0E=", {"command": "aws", "args": ["eks", "get-token"]})
    )
    assert doc["current-context"] == "c1"
    assert doc["clusters"] == [
        {"name": "c1", "cluster": {"server": "https://api.example", "certificate-authority-data": "Q0E="}}
    ]
    assert doc["contexts"][0]["context"] == {"cluster": "c1", "user": "c1"}
    user = doc["users"][0]["user"]
    assert set(user) == {"exec"}, "only an exec plugin: no token or password in the config"
    assert user["exec"]["apiVersion"] == "client.authentication.k8s.io/v1beta1"
    assert user["exec"]["command"] == "aws"

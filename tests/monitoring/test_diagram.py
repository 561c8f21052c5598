"""The architecture picture `make plan` writes names every site and node pool of a stack."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from infra.plan import diagram
from infra.plan.run import record_stack


def test_dev_diagram_parses_and_names_every_site_and_pool(tmp_path):
    from tests.stacks import REPO, stack_config

    graph = record_stack("dev", REPO)
    path = diagram.write(graph, tmp_path)
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    text = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    for site in stack_config("dev")["llm-platform:sites"]:
        assert f"site {site['name']}" in text
        for pool in site["gpuPools"]:
            assert pool["name"] in text
        assert "system" in text
    assert "kube-prometheus-stack" in text and "ScaledObject" in text

"""The offline plan renders aws.iam.getPolicyDocument the way the AWS provider does, so the IAM
documents in plan.json are the ones `pulumi up` sends (rules from hashicorp/terraform-provider-aws
internal/service/iam/policy_model.go and policy_document_data_source.go; read 2026-12-02)."""

from __future__ import annotations

import json

from infra.plan.mocks import policy_document_json


def test_one_value_is_a_string_and_several_a_reverse_sorted_set():
    doc = json.loads(
        policy_document_json(
            {
                "statements": [
                    {"actions": ["s3:GetObject"], "resources": ["b", "a", "b"]},
                    {
                        "effect": "Deny",
                        "actions": ["sts:AssumeRole", "sts:TagSession"],
                        "principals": [{"type": "Service", "identifiers": ["pods.eks.amazonaws.com"]}],
                    },
                ]
            }
        )
    )
    assert doc["Version"] == "2012-10-17"
    first, second = doc["Statement"]
    assert first == {"Effect": "Allow", "Action": "s3:GetObject", "Resource": ["b", "a"]}
    assert second == {
        "Effect": "Deny",
        "Action": ["sts:TagSession", "sts:AssumeRole"],
        "Principal": {"Service": "pods.eks.amazonaws.com"},
    }


def test_conditions_keep_value_order_and_group_by_test():
    doc = json.loads(
        policy_document_json(
            {
                "statements": [
                    {
                        "actions": ["elasticloadbalancing:AddTags"],
                        "conditions": [
                            {"test": "StringEquals", "variable": "b:x", "values": ["2", "1"]},
                            {"test": "StringEquals", "variable": "a:y", "values": ["only"]},
                        ],
                    }
                ]
            }
        )
    )
    assert doc["Statement"][0]["Condition"] == {"StringEquals": {"a:y": "only", "b:x": ["2", "1"]}}


def test_the_layout_is_gos_indented_json():
    rendered = policy_document_json({"statements": [{"actions": ["a:B"], "resources": ["arn:x<y>&z"]}]})
    assert rendered.startswith('{\n  "Version": "2012-10-17",\n  "Statement": [\n    {\n      "Effect": "Allow"')
    assert "\\u003c" in rendered and "\\u0026" in rendered and "<" not in rendered
    # The field order is the provider's struct order, not alphabetical.
    assert list(json.loads(rendered)["Statement"][0]) == ["Effect", "Action", "Resource"]

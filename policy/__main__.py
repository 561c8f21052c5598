"""Entry point Pulumi runs for `--policy-pack policy`: serve the rules to the engine."""

import sys
from pathlib import Path

# The analyzer runs this directory as a script; the rules import the repo's catalog.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import EnforcementLevel, PolicyPack

from policy.rules import POLICIES

PolicyPack(
    name="llm-platform",
    policies=POLICIES,
    # Per stack, policy/config.<stack>.json raises this (mandatory in prod) or lowers it.
    enforcement_level=EnforcementLevel.ADVISORY,
)

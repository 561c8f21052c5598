"""Every rule of the pack, by theme."""

from policy.rules import cost, gpu_fit, hardening, lifecycle, reliability, security

POLICIES = [
    *security.POLICIES,
    *hardening.POLICIES,
    *reliability.POLICIES,
    *cost.POLICIES,
    *gpu_fit.POLICIES,
    *lifecycle.POLICIES,
]

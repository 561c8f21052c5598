"""The llm-platform Pulumi program and its offline tools (plan, policy, cost)."""

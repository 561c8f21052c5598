"""The llm-platform CrossGuard policy pack (rules in policy.rules)."""

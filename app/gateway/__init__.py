"""OpenAI-compatible gateway in front of vLLM replicas: auth, limits, routing, metrics."""

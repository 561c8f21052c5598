"""Serving applications: the OpenAI-compatible gateway and the vLLM simulator."""

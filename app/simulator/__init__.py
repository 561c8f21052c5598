"""An OpenAI-compatible server that imitates vLLM's timing, prefix cache and metrics."""

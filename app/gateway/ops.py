"""The operations port: /metrics and /openapi.json, off the port clients reach.

The client port sits behind a public load balancer, and the metrics carry key ids, per-key
traffic, auth failures and replica addresses. Prometheus scrapes this port from inside the
cluster (the NetworkPolicy lets only the monitoring namespace in). Every worker listens on it
with SO_REUSEPORT; with several workers each answers for all of them (see metrics.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import GatewayMetrics


class OpsServer:
    def __init__(self, host: str, port: int, metrics: GatewayMetrics, openapi: Callable[[], dict[str, Any]]) -> None:
        self._host = host
        self._port = port
        self._metrics = metrics
        self._openapi = openapi
        self._runner: web.AppRunner | None = None

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        # CONTENT_TYPE_LATEST carries its charset, which aiohttp wants in the header, not content_type.
        return web.Response(body=self._metrics.exposition(), headers={"content-type": CONTENT_TYPE_LATEST})

    async def _serve_openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self._openapi()), content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/openapi.json", self._serve_openapi)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port, reuse_port=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

"""With several uvicorn workers, any scrape sees every worker's requests."""

from __future__ import annotations

import httpx
from gateway_testkit import eventually, gateway_env, metric_sum, scrape

from app.devstack import start_gateway


def test_counts_add_up_across_workers(log_dir, procs, keys, redis_server, replicas):
    env = gateway_env(keys, redis_server.url, [r.url for r in replicas])
    env["PROMETHEUS_MULTIPROC_DIR"] = str(log_dir / "multiproc-metrics")
    gw = procs(start_gateway(log_dir, env, workers=2))
    body = {"model": "sim-model", "prompt": "count me", "max_tokens": 1}
    headers = {"authorization": f"Bearer {keys.by_id['spare']}"}
    for _ in range(20):
        # A new connection each time, so the kernel spreads them over both workers.
        with httpx.Client(timeout=30) as client:
            r = client.post(gw.url + "/v1/completions", json=body, headers=headers)
            assert r.status_code == 200

    def all_counted():
        for _ in range(6):  # several scrapes, landing on either worker
            samples = scrape(gw.metrics_url)
            assert metric_sum(samples, "gateway_requests_total", key_id="spare", status="200") == 20
            assert metric_sum(samples, "gateway_completion_tokens_total", key_id="spare") == 20
        return True

    eventually(all_counted, timeout=10)
    assert metric_sum(scrape(gw.metrics_url), "gateway_requests_in_flight") == 0

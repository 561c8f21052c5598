"""`python -m app.gateway --port P [--workers N]`: validate the configuration, then serve.

Configuration comes from GATEWAY_* variables (see settings.py); flags override the process ones.
A bad value stops start-up with one line naming the variable.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from .keyfile import KeyFileError, load_key_file
from .settings import ENV_PREFIX, GatewaySettings, describe_error


def _prepare_metrics_dir(workers: int) -> None:
    """Multiprocess metrics need a shared, empty directory, set before prometheus_client is imported."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        if workers == 1:
            return
        path = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app.gateway", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", help="listen address (GATEWAY_HOST, default 0.0.0.0)")
    parser.add_argument("--port", help="listen port (GATEWAY_PORT, default 8000)")
    parser.add_argument("--workers", help="uvicorn worker processes (GATEWAY_WORKERS, default 1)")
    parser.add_argument("--log-level", dest="log_level", help="debug|info|warning|error (GATEWAY_LOG_LEVEL)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for name, value in vars(args).items():
        if value is not None:
            # Workers read the settings from the environment, so flags travel the same way.
            os.environ[ENV_PREFIX + name.upper()] = str(value)
    try:
        settings = GatewaySettings()
        if settings.api_keys_file is not None:
            load_key_file(settings.api_keys_file)
    except ValidationError as exc:
        sys.exit(f"error: {describe_error(exc)}")
    except KeyFileError as exc:
        sys.exit(f"error: {ENV_PREFIX}API_KEYS_FILE: {exc}")

    _prepare_metrics_dir(settings.workers)

    import uvicorn

    from .logging import log_config

    uvicorn.run(
        "app.gateway.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        # httptools, with the limits and timeouts of server.py.
        http="app.gateway.server:GatewayHttpProtocol",
        lifespan="on",
        access_log=False,
        log_config=log_config(settings.log_level, dict(settings.pii_patterns)),
        # Longer than a typical client pool's idle time, so clients reuse connections.
        timeout_keep_alive=75,
        backlog=4096,
        server_header=False,
        # The gateway never reads the client address, so X-Forwarded-For need not be parsed per request.
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()

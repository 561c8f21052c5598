"""`python -m app.simulator --port P`: serve the simulator with uvicorn."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from .settings import SimulatorSettings


def _parse(argv: list[str]) -> SimulatorSettings:
    parser = argparse.ArgumentParser(prog="python -m app.simulator", description=__doc__)
    for name, field in SimulatorSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, default=None, help=f"{field.description or name} (env SIM_{name.upper()})")
    args = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        return SimulatorSettings(**args)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "?"
        sys.exit(f"error: SIM_{name.upper()} / --{name.replace('_', '-')}: {err['msg']}")


def main(argv: list[str] | None = None) -> None:
    settings = _parse(sys.argv[1:] if argv is None else argv)
    import uvicorn

    from .api import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()

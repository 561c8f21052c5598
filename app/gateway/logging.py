"""JSON log lines. Handlers log ids, counts and timings; never prompts, completions or keys; and
every text that does go out passes the PII redactor (pii.py), for what a message or an error
from elsewhere (a library, an upstream's error text) might carry."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from .pii import Redactor

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def __init__(self, pii_patterns: dict[str, str] | None = None) -> None:
        super().__init__()
        self._redact = Redactor(pii_patterns)

    def format(self, record: logging.LogRecord) -> str:
        redact = self._redact
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info and record.levelno >= logging.ERROR:
            # The exception type only: a traceback's reprs could carry request content.
            out["error"] = getattr(record.exc_info[0], "__name__", "error")
        return orjson.dumps(out, default=str).decode()


def log_config(level: str, pii_patterns: dict[str, str] | None = None) -> dict[str, Any]:
    """A logging.config dict for uvicorn and the gateway, so start-up lines are JSON too."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.gateway.logging.JsonFormatter", "pii_patterns": pii_patterns or {}}},
        "handlers": {"stderr": handler},
        "loggers": {
            "gateway": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }

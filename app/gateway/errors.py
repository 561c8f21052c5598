"""Errors in OpenAI's JSON shape, and the handlers that make every failure one of them."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Send

from .requestid import request_id

log = logging.getLogger("gateway")
access = logging.getLogger("gateway.access")

JSON = "application/json"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


class OpenAIError(Exception):
    """Raised anywhere in request handling; rendered as OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        # Set by admission once the caller is known, for the refusal's log line.
        self.key_id: str | None = None
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self, rid: str) -> Response:
        return Response(
            self.body(), status_code=self.status, media_type=JSON, headers={**self.headers, "x-request-id": rid}
        )

    async def send(self, send: Send, rid: str) -> None:
        """Answers with this error on a bare ASGI connection (the completions endpoint has no Response)."""
        body = self.body()
        headers = [
            (b"content-type", JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode()),
        ]
        headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def log_refusal(err: OpenAIError, rid: str, path: str, client: Sequence[object] | None) -> None:
    """One line per request refused at the edge, so brute force and model probing leave a trace.

    Only what identifies the attempt: never the key presented, the body or the model asked for.
    """
    access.info(
        "refused",
        extra={
            "request_id": rid,
            "status": err.status,
            "code": err.code,
            "param": err.param,
            "path": path[:256],
            "key_id": err.key_id,
            "client": client[0] if client else None,
        },
    )


def _param(loc: tuple[int | str, ...]) -> str | None:
    # pydantic puts the union member it tried into the location ("prompt.str"); users know fields.
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and "[" in p)]
    parts = [p for p in parts if p not in {"str", "int", "list", "dict", "float", "bool", "list[str]", "list[int]"}]
    return ".".join(parts) or None


def validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """A message and the field it names, from the first of pydantic's errors."""
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request: it is not valid JSON.", None
    param = _param(tuple(first.get("loc", ())))
    if param is None and first.get("type") in ("model_type", "model_attributes_type", "dict_type"):
        return "The request body must be a JSON object, sent with Content-Type: application/json.", None
    msg = str(first.get("msg", "invalid value"))
    return (f"Invalid value for '{param}': {msg}." if param else f"Invalid request body: {msg}."), param


def install(app: FastAPI) -> None:
    def refuse(request: Request, err: OpenAIError) -> Response:
        rid = request_id(request)
        log_refusal(err, rid, request.url.path, request.scope.get("client"))
        return err.response(rid)

    @app.exception_handler(OpenAIError)
    async def _openai(request: Request, exc: OpenAIError) -> Response:
        return refuse(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        message, param = validation_message(exc.errors())
        return refuse(request, OpenAIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            err = OpenAIError(404, f"Unknown route {request.method} {request.url.path}.", code="unknown_url")
        elif exc.status_code == 405:
            # Starlette names the allowed methods; a 405 must carry them (RFC 9110, 15.5.6).
            err = OpenAIError(
                405,
                f"Method {request.method} is not allowed on {request.url.path}.",
                code="method_not_allowed",
                headers=dict(exc.headers or {}),
            )
        else:
            err = OpenAIError(exc.status_code, str(exc.detail))
        return refuse(request, err)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        rid = request_id(request)
        log.error("unhandled error", extra={"request_id": rid, "error": type(exc).__name__})
        return OpenAIError(500, f"Internal error; request id {rid}.", "server_error").response(rid)

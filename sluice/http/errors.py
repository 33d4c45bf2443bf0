"""JSON everywhere: every error answer is an object naming the problem."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from quart import Quart, Response
from werkzeug.exceptions import HTTPException

log = logging.getLogger("sluice.http")

_encoder = msgspec.json.Encoder(decimal_format="string")


def json_bytes(body: Any) -> bytes:
    return _encoder.encode(body)


def install_error_handlers(app: Quart) -> None:
    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = {
            413: "request body too large (limit %d bytes)"
            % (app.config["MAX_CONTENT_LENGTH"] or 0),
        }.get(status, exc.description or exc.name)
        response = Response(json_bytes({"error": message}), status, content_type="application/json")
        if status == 405 and exc.get_headers():
            for key, value in exc.get_headers():
                if key.lower() == "allow":
                    response.headers["Allow"] = value
        return response

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return Response(
            json_bytes({"error": "internal error"}), 500, content_type="application/json"
        )

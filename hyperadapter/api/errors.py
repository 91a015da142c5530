"""JSON errors: `{"error": {"type", "message"}}` with a 4xx for anything the client can fix.

Every exception reaching Flask becomes one of these; an unexpected one is logged with its
traceback and answered 500 without internals.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

log = logging.getLogger("hyperadapter.api")


class APIError(Exception):
    def __init__(self, status: int, type_: str, message: str):
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message


def bad_request(message: str) -> APIError:
    return APIError(400, "invalid_request_error", message)


def not_found(message: str) -> APIError:
    return APIError(404, "not_found_error", message)


def unprocessable(message: str) -> APIError:
    return APIError(422, "invalid_request_error", message)


def too_large(message: str) -> APIError:
    return APIError(413, "request_too_large", message)


def error_response(status: int, type_: str, message: str):
    response = jsonify({"error": {"type": type_, "message": message}})
    response.status_code = status
    return response


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(x) for x in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def install(app: Flask) -> None:
    @app.errorhandler(APIError)
    def api_error(exc: APIError):
        return error_response(exc.status, exc.type, exc.message)

    @app.errorhandler(ValidationError)
    def validation_error(exc: ValidationError):
        return error_response(422, "invalid_request_error", describe_validation(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        names = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                 429: "rate_limit_error"}
        message = exc.description or exc.name
        if exc.code == 413:
            message = "request body is larger than the server's limit"
        return error_response(exc.code or 500, names.get(exc.code, "api_error"), message)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "api_error", "internal error; see the server log")

"""Reading a request's JSON body for the annotation server: the content type, the
Content-Encoding (uncompressed, gzip, deflate), the nesting depth (checked on the bytes before
parsing) and Python's int-string limit, each refused with a 4xx :class:`ApiError`."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import numpy as np
from aiohttp import web

from sam_lightning.annotate.store import ApiError

MAX_JSON_DEPTH = 32  # the API's bodies nest 4 levels deep ({"prompts": {"points": [[...]]}})
#: Content-Encoding values whose bodies aiohttp decodes (br and zstd when their library is
#: installed; without it aiohttp answers 400 itself, before any handler runs).
CONTENT_ENCODINGS = ("", "identity", "gzip", "deflate", "br", "zstd")
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included
_DEPTH_CHUNK = 2**20  # bytes scanned at a time by _nested_deeper


class UnreadableBody(ApiError):
    """A body aiohttp could not decode: answered with ``Connection: close``, since aiohttp
    drops the connection once the reply is sent (a client must not reuse it)."""


def shorten(text: str, limit: int = 80) -> str:
    """``repr(text)``, cut to about ``limit`` characters (header values in messages)."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "..."


async def read_json(request: web.Request) -> Any:
    """The JSON body of ``request``; :class:`ApiError` (400 or 415) for anything else."""
    if not request.can_read_body:
        raise ApiError(400, "this request needs a JSON body")
    if request.content_type != "application/json":
        raise ApiError(415, f"send the body as application/json, not {request.content_type}")
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in CONTENT_ENCODINGS:
        raise ApiError(
            415,
            f"Content-Encoding {shorten(request.headers['Content-Encoding'])} is not "
            "supported: send the body uncompressed, gzip or deflate",
        )
    try:
        raw = await request.read()
    except web.RequestPayloadError as error:  # a body that does not decode, or is cut short
        if encoding in ("", "identity"):
            raise UnreadableBody(400, f"the body could not be read: {_innermost(error)}") from None
        raise UnreadableBody(
            400,
            f"the body is not valid {encoding} data (Content-Encoding: {encoding}): "
            f"{_innermost(error)}",
        ) from None
    if _nested_deeper(raw, MAX_JSON_DEPTH):
        raise ApiError(
            400, f"the body is not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(
            400, f"the body is not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None
    except ValueError:  # int(): a number over Python's int-string conversion limit
        raise ApiError(
            400,
            "the body is not valid JSON: it has an integer with more than "
            f"{sys.get_int_max_str_digits()} digits",
        ) from None
    return body


def _innermost(error: BaseException) -> str:
    """The message of the first exception in ``error``'s chain (e.g. zlib's reason)."""
    for _ in range(8):  # chains are short; a bound guards against a cycle
        inner = error.__cause__ or error.__context__
        if inner is None:
            break
        error = inner
    lines = str(error).strip().splitlines()
    return lines[-1].strip() if lines else type(error).__name__


def _nested_deeper(raw: bytes, limit: int) -> bool:
    """Whether the JSON text ``raw`` nests lists and objects more than ``limit`` levels deep,
    checked on the bytes before parsing (json.loads recurses: about a thousand levels raise
    RecursionError, and the checks and messages downstream recurse too). Brackets inside
    strings do not count; the usual body (a few brackets, or one long list of run lengths)
    is answered by counting them."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    text = _JSON_STRING.sub(b'""', raw)
    depth = 0
    for start in range(0, len(text), _DEPTH_CHUNK):
        chunk = np.frombuffer(text, np.uint8, min(_DEPTH_CHUNK, len(text) - start), start)
        step = (chunk == ord("[")).astype(np.int32) + (chunk == ord("{"))
        step -= (chunk == ord("]")).astype(np.int32) + (chunk == ord("}"))
        levels = np.cumsum(step) + depth
        if levels.max() > limit:
            return True
        depth = int(levels[-1])
    return False


def _no_constant(name: str) -> None:
    raise ApiError(400, f"the body is not valid JSON: {name} is not a number in JSON")

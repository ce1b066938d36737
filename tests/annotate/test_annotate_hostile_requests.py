"""Requests that used to crash the annotation server (500) get a 4xx with a JSON message
naming the problem, and the server keeps answering: opaque origins, deeply nested bodies,
huge integers, bodies that are not in their Content-Encoding, ``previous_candidate`` alone
and boxes outside the image (issue #20)."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
import requests

DECODE, MASKS = "api/images/a.png/decode", "api/images/a.png/masks"  # a.png is 64 x 48
POINT = {"points": [[20, 15, 1]]}
FULL = {"size": [48, 64], "counts": [0, 48 * 64]}  # every pixel
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def client(make_tool, serve):
    _, client = serve(make_tool())
    return client


def post_raw(client, path: str, data: bytes, **headers: str) -> requests.Response:
    return client.session.post(
        client.url + path, data=data, headers={**JSON, **headers}, timeout=60
    )


def assert_refused(response: requests.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, message


def assert_still_serves(client) -> None:
    """A normal decode after the refused requests: 200 with candidates."""
    response = client.post(DECODE, POINT)
    assert response.status_code == 200, response.text
    assert len(response.json()["candidates"]) == 3


# ---------------------------------------------------------------------------- origins


@pytest.mark.parametrize(
    "origin",
    [
        "null",  # a file: page, a sandboxed frame, a cross-origin redirect
        "file://",
        "file:///home/someone/page.html",
        "about:blank",
        "data:text/html,x",
        "not a url",
        "http://[::1",  # does not parse
        "chrome-extension://abcdef",
    ],
)
def test_opaque_and_unparsable_origins_are_refused_like_foreign_ones(make_tool, serve, origin):
    server, client = serve(make_tool())
    writes = [
        client.post(DECODE, POINT, headers={"Origin": origin}),
        client.post(MASKS, {"mask": FULL}, headers={"Origin": origin}),
        client.post("api/images/a.png/done", {"done": True}, headers={"Origin": origin}),
        client.delete(f"{MASKS}/1", headers={"Origin": origin}),
    ]
    for response in writes:
        assert_refused(response, 403, "cross-origin request from", repr(origin), "refused")
    assert client.get(MASKS).json()["annotations"] == []  # nothing was written
    same = client.post(DECODE, POINT, headers={"Origin": server.url[:-1]})
    assert same.status_code == 200, same.text
    assert_still_serves(client)


# ---------------------------------------------------------------------- nested bodies


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (DECODE, b"[" * 100_000 + b"]" * 100_000),  # RecursionError in json.loads
        (DECODE, b'{"a": ' * 100_000 + b"1" + b"}" * 100_000),
        (DECODE, b'{"points": ' + b"[" * 990 + b"]" * 990 + b"}"),  # parses; deep for checks
        (DECODE, b'{"points": [' + b"[" * 40 + b"]" * 40 + b"]}"),
        (MASKS, b'{"mask": {"size": [48, 64], "counts": ' + b"[" * 990 + b"]" * 990 + b"}}"),
        ("api/images/a.png/done", b'{"done": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ],
)
def test_deeply_nested_bodies_are_refused(client, path, body):
    assert_refused(post_raw(client, path, body), 400, "not valid JSON", "nested deeper than 32")
    assert_still_serves(client)


def test_nesting_up_to_the_limit_reaches_validation(client):
    body = b'{"points": [' + b"[" * 30 + b"]" * 30 + b"]}"  # 32 levels
    response = post_raw(client, DECODE, body)
    assert response.status_code == 400 and "nested" not in response.json()["error"]
    assert "points[0] must be [x, y, label]" in response.json()["error"]


def test_brackets_inside_strings_do_not_count_as_nesting(client):
    counts = "[" * 40 + '\\"' + "{" * 40  # a (bad) compressed RLE with an escaped quote
    response = client.post(MASKS, {"mask": {"size": [48, 64], "counts": counts}})
    assert response.status_code == 400 and "nested" not in response.json()["error"]
    assert "mask is not a valid RLE" in response.json()["error"]


# ---------------------------------------------------------------------- huge integers


@pytest.mark.parametrize(
    ("path", "body", "fragments"),
    [
        # over Python's int-string conversion limit: ValueError in json.loads
        (DECODE, b'{"points": [[' + b"9" * 5000 + b", 1, 1]]}",
         ("not valid JSON", "integer with more than 4300 digits")),
        (DECODE, b'{"box": [0, 0, 10, ' + b"9" * 5000 + b"]}", ("more than 4300 digits",)),
        (MASKS, b'{"mask": {"size": [48, 64], "counts": [0, ' + b"9" * 5000 + b"]}}",
         ("more than 4300 digits",)),
        # parsed, but beyond float: OverflowError in the checks
        (DECODE, b'{"points": [[' + b"9" * 4000 + b", 1, 1]]}",
         ("points[0][0] must be a finite number", "integer of about 4000 digits")),
        (DECODE, b'{"points": [[1, -' + b"9" * 400 + b", 1]]}", ("points[0][1] must be a finite",)),
        (DECODE, b'{"box": [0, 0, ' + b"9" * 4000 + b", 10]}", ("box[2] must be a finite number",)),
        (MASKS, b'{"mask": {"size": [48, 64], "counts": [0, 3072]}, "seconds": ' + b"9" * 4000
         + b"}", ("seconds must be a number",)),
        (MASKS, b'{"mask": {"size": [48, 64], "counts": [0, 3072]}, "score": ' + b"9" * 4000
         + b"}", ("score must be a finite number",)),
        (MASKS, b'{"mask": {"size": [48, 64], "counts": [0, 3072]}, "prompts": {"box": [0, 0, '
         + b"9" * 4000 + b", 1]}}", ("box[2] must be a finite number",)),
        (DECODE, b'{"points": [[1e400, 1, 1]]}', ("points[0][0] must be a finite number",)),
    ],
)  # fmt: skip
def test_huge_numbers_are_refused(client, path, body, fragments):
    assert_refused(post_raw(client, path, body), 400, *fragments)
    assert_still_serves(client)


def test_huge_mask_id_is_refused_with_a_short_message(client):
    response = client.delete(f"{MASKS}/{'9' * 5000}")
    assert_refused(response, 400, "mask id must be an integer", "(5000 characters)")
    assert len(response.json()["error"]) < 200
    assert_still_serves(client)


# ------------------------------------------------------------------ content encodings


@pytest.mark.parametrize(
    ("encoding", "data", "fragment"),
    [
        ("gzip", b"this is not gzip", "the body is not valid gzip data (Content-Encoding: gzip)"),
        ("gzip", json.dumps(POINT).encode(), "not valid gzip data"),  # plain JSON, mislabelled
        ("GZIP", b"\x1f\x8b" + b"\x00" * 40, "not valid gzip data"),
        ("deflate", b"not deflate either", "not valid deflate data"),
    ],
)
def test_bodies_that_do_not_decode_are_refused(client, encoding, data, fragment):
    response = post_raw(client, DECODE, data, **{"Content-Encoding": encoding})
    assert_refused(response, 400, fragment)
    assert response.headers.get("Connection", "").lower() == "close"  # aiohttp drops it
    assert_still_serves(client)  # the same session: a new connection


def test_unknown_content_encoding_is_refused(client):
    response = post_raw(client, DECODE, json.dumps(POINT).encode(), **{"Content-Encoding": "zzz"})
    assert_refused(response, 415, "Content-Encoding 'zzz' is not supported", "gzip")
    assert_still_serves(client)


def test_compressed_bodies_are_accepted(client):
    body = json.dumps(POINT).encode()
    for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        response = post_raw(client, DECODE, data, **{"Content-Encoding": encoding})
        assert response.status_code == 200, (encoding, response.text)
    identity = post_raw(client, DECODE, body, **{"Content-Encoding": "identity"})
    assert identity.status_code == 200, identity.text


# ------------------------------------------------------------------ decode semantics


def test_previous_candidate_needs_previous(client):
    for candidate in (0, 1, 7):
        response = client.post(DECODE, {**POINT, "previous_candidate": candidate})
        assert_refused(response, 400, "previous_candidate was given without previous")
    first = client.post(DECODE, POINT).json()
    with_previous = client.post(DECODE, {**POINT, "previous": first["id"], "previous_candidate": 1})
    assert with_previous.status_code == 200, with_previous.text


@pytest.mark.parametrize(
    "box",
    [
        [100, 10, 120, 20],  # right of the 64 x 48 image
        [-30, 10, -1, 20],  # left
        [10, -30, 20, -0.5],  # above
        [10, 49, 20, 60],  # below
        [65, 49, 70, 60],  # beyond the corner
    ],
)
def test_boxes_outside_the_image_are_refused_like_points(client, box):
    shown = str([float(v) for v in box])
    assert_refused(
        client.post(DECODE, {"box": box}),
        400,
        f"box {shown} is outside the 64 x 48 image",
        "must overlap [0, 64] x [0, 48]",
    )
    saved = client.post(MASKS, {"mask": FULL, "prompts": {"points": [], "box": box}})
    assert_refused(saved, 400, "is outside the 64 x 48 image")
    assert client.get(MASKS).json()["annotations"] == []
    assert_still_serves(client)


@pytest.mark.parametrize(
    "box",
    [
        [-20, -10, 30, 25],  # partly outside, top left
        [40, 30, 200, 100],  # partly outside, bottom right
        [-100, -100, 500, 500],  # around the whole image
        [64, 0, 80, 10],  # touching the right edge, as a point at x = 64 may
        [0, 48, 10, 60],  # touching the bottom edge
    ],
)
def test_boxes_overlapping_the_image_are_accepted(client, box):
    response = client.post(DECODE, {"box": box, "multimask": False})
    assert response.status_code == 200, response.text
    assert len(response.json()["candidates"]) == 1


def test_box_too_large_for_float32_is_refused(client):
    response = client.post(DECODE, {"box": [-1e39, 0, 1e39, 10]})
    assert_refused(response, 400, "is too large", "overflow float32")
    assert_still_serves(client)

"""The web server of the annotation tool (aiohttp): the page and a JSON API.

API (``<name>`` is an image's file name, URL-encoded; bodies and replies are JSON; every
error is ``{"error": message}`` with a 4xx status, or 500 for a bug)::

    GET    /                                the page (static/index.html, app.js, app.css)
    GET    /api/info                        {mode, annotator, session, images}
    GET    /api/images                      [{name, width, height, masks, done}, ...]
    GET    /api/images/<name>/pixels        the image (orientation applied)
    POST   /api/images/<name>/embed         semi: pre-fill once; then embed (cached)
                                            -> {seconds, cached: memory|disk|computed, prefilled}
    POST   /api/images/<name>/decode        {points: [[x, y, label], ...], box: [x0, y0, x1, y1]
                                            | null, previous: <decode id> | null,
                                            previous_candidate: int | null, multimask: bool}
                                            -> {id, candidates: [{mask: COCO RLE, score, area}],
                                                latency_ms, embed_seconds}
    GET    /api/images/<name>/masks         {image, annotations, done}
    POST   /api/images/<name>/masks         {mask: COCO RLE (counts string or run lengths),
                                            prompts: {points, box}, seconds, source:
                                            person|model, candidate, score, refined}
                                            -> the saved annotation
    DELETE /api/images/<name>/masks/<id>    -> {deleted: id}
    POST   /api/images/<name>/done          {done: bool}
    GET    /api/stats                       {rows, files, current} (see annotate.stats)

Decodes run the prompt encoder and mask decoder on the cached embedding; ``latency_ms`` is
that time on the server (also logged). ``previous`` feeds back the low-resolution logits of
an earlier decode of the same image (its ``previous_candidate``, default the best one;
``previous_candidate`` alone is refused). Points must lie in the image (``[0, W] x [0, H]``)
and a box must overlap it (a box partly outside is taken, as SAM takes it).
Every response carries its server-side time as a ``Server-Timing: app;dur=<ms>`` header.

Security: the server listens on 127.0.0.1 unless ``host`` is given, and any other address
needs a ``token`` (:func:`check_bind` refuses to start otherwise). With a token, every
request needs it: ``?token=<token>`` once (a cookie is set; the page URL printed at start
has it), the ``X-Annotate-Token`` header or ``Authorization: Bearer <token>``; a missing
token gives 401, a wrong one 403. Without a token, requests whose ``Host`` is not a
loopback name are refused (DNS rebinding). Cross-origin POST and DELETE requests are
refused (403), opaque origins such as ``Origin: null`` (a ``file:`` page, a sandboxed frame)
included. JSON bodies must be sent as ``application/json`` (415), uncompressed or with
``Content-Encoding`` gzip or deflate (another encoding: 415; a body that does not decode:
400), nested at most 32 levels deep (400), with integers of at most Python's 4300 digits
(400): :mod:`sam_lightning.annotate.request_body`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from yarl import URL

from sam_lightning.annotate.request_body import UnreadableBody, read_json, shorten
from sam_lightning.annotate.store import ApiError
from sam_lightning.annotate.tool import AnnotationTool

log = logging.getLogger("sam_lightning.annotate")

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css"}
TOKEN_COOKIE = "sam_annotate_token"
TOKEN_HEADER = "X-Annotate-Token"
LOOPBACK_NAMES = ("localhost",)
MAX_BODY = 64 * 2**20  # an uncompressed RLE of a large, ragged mask
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'"
)
TOOL: web.AppKey[AnnotationTool] = web.AppKey("tool", AnnotationTool)
TOKEN: web.AppKey[str | None] = web.AppKey("token", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Raises ValueError unless listening on ``host`` is safe: a loopback address, or any
    address with a token."""
    if not host:
        raise ValueError("server.host is empty; the default is 127.0.0.1")
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ValueError("server.token must be a non-empty string (or null for none)")
    if not is_loopback(host) and token is None:
        raise ValueError(
            f"refusing to listen on {host}: anyone who can reach it could read the images and "
            "change the annotations. Set server.token=<secret> as well (or use the default "
            "server.host=127.0.0.1 and an SSH tunnel)"
        )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _timing(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Adds the server-side time of every request as a ``Server-Timing`` header."""
    start = time.perf_counter()
    response = await handler(request)
    response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - start) * 1000:.1f}"
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        response = _error(error.status, error.message)
        if isinstance(error, UnreadableBody):
            response.force_close()
        return response
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _error(error.status, f"{error.reason}: {request.method} {request.path}")
    except Exception as error:  # a bug: say so instead of a bare 500
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, f"internal error: {type(error).__name__}: {error}")


def _given_token(request: web.Request) -> tuple[str | None, bool]:
    """The token the request carries and whether it came in the query string."""
    header = request.headers.get(TOKEN_HEADER)
    if header is None and request.headers.get("Authorization", "").startswith("Bearer "):
        header = request.headers["Authorization"][len("Bearer ") :]
    if header is not None:
        return header, False
    if "token" in request.query:
        return request.query["token"], True
    return request.cookies.get(TOKEN_COOKIE), False


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[TOKEN]
    if token is None and not is_loopback(request.url.host or ""):
        raise ApiError(403, f"Host {request.host!r} refused: this server answers localhost only")
    if request.method not in ("GET", "HEAD") and "Origin" in request.headers:
        origin = request.headers["Origin"]
        if not _same_origin(origin, request):
            raise ApiError(
                403,
                f"cross-origin request from {shorten(origin)} refused: POST and DELETE are "
                "accepted from this server's own page only",
            )
    if token is None:
        return await handler(request)
    given, from_query = _given_token(request)
    if given is None:
        raise ApiError(
            401,
            "this server needs its token: open the URL printed at start-up (.../?token=...) "
            f"or send the {TOKEN_HEADER} header",
        )
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(403, "wrong token")
    if from_query and request.method == "GET" and request.path == "/":
        # answered with a redirect to the bare URL, so the token leaves the address bar
        response: web.StreamResponse = web.Response(status=303, headers={"Location": "/"})
    else:
        response = await handler(request)
    if from_query:
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
    return response


def _same_origin(origin: str, request: web.Request) -> bool:
    """Whether the ``Origin`` header names this server's own origin. An opaque origin
    (``null``: a ``file:`` page, a sandboxed frame, a redirect) or one that does not parse
    (``file://...``, garbage) is never this server."""
    try:
        return URL(origin).origin() == request.url.origin()
    except ValueError:
        return False


def _tool(request: web.Request) -> AnnotationTool:
    return request.app[TOOL]


async def _index(request: web.Request) -> web.StreamResponse:
    response = web.FileResponse(STATIC_DIR / "index.html")
    response.headers.update({"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})
    return response


async def _static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["file"]
    if name not in STATIC_FILES:
        raise ApiError(404, f"no static file {name!r}")
    body = (STATIC_DIR / name).read_bytes()
    return web.Response(
        body=body, content_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"}
    )


async def _info(request: web.Request) -> web.Response:
    return web.json_response(_tool(request).info())


async def _images(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(_tool(request).list_images))


async def _pixels(request: web.Request) -> web.Response:
    data, content_type = await asyncio.to_thread(_tool(request).pixels, request.match_info["name"])
    return web.Response(body=data, content_type=content_type, headers={"Cache-Control": "private"})


async def _embed(request: web.Request) -> web.Response:
    result = await asyncio.to_thread(_tool(request).prepare, request.match_info["name"])
    return web.json_response(result)


async def _decode(request: web.Request) -> web.Response:
    body = await read_json(request)
    result = await asyncio.to_thread(_tool(request).decode, request.match_info["name"], body)
    return web.json_response(result)


async def _masks(request: web.Request) -> web.Response:
    return web.json_response(
        await asyncio.to_thread(_tool(request).masks, request.match_info["name"])
    )


async def _save_mask(request: web.Request) -> web.Response:
    body = await read_json(request)
    saved = await asyncio.to_thread(_tool(request).save_mask, request.match_info["name"], body)
    return web.json_response(saved, status=201)


async def _delete_mask(request: web.Request) -> web.Response:
    info = request.match_info
    return web.json_response(
        await asyncio.to_thread(_tool(request).delete_mask, info["name"], info["id"])
    )


async def _done(request: web.Request) -> web.Response:
    body = await read_json(request)
    return web.json_response(
        await asyncio.to_thread(_tool(request).set_done, request.match_info["name"], body)
    )


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(_tool(request).stats))


def create_app(tool: AnnotationTool, token: str | None = None) -> web.Application:
    """The aiohttp application serving ``tool`` (``token``: see the module docstring)."""
    app = web.Application(middlewares=[_timing, _errors, _guard], client_max_size=MAX_BODY)
    app[TOOL] = tool
    app[TOKEN] = token
    image = "/api/images/{name}"
    app.add_routes(
        [
            web.get("/", _index),
            web.get("/static/{file}", _static),
            web.get("/api/info", _info),
            web.get("/api/images", _images),
            web.get(f"{image}/pixels", _pixels),
            web.post(f"{image}/embed", _embed),
            web.post(f"{image}/decode", _decode),
            web.get(f"{image}/masks", _masks),
            web.post(f"{image}/masks", _save_mask),
            web.delete(image + "/masks/{id}", _delete_mask),
            web.post(f"{image}/done", _done),
            web.get("/api/stats", _stats),
        ]
    )
    return app


def page_url(host: str, port: int, token: str | None) -> str:
    """The URL to open (with the token in it, when there is one)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


class ServerThread:
    """Runs the server on its own event loop in a background thread (tests, notebooks).

    ``port=0`` picks a free port; :attr:`url` and :attr:`port` are set once started.
    """

    def __init__(
        self, tool: AnnotationTool, host: str = "127.0.0.1", port: int = 0, token: str | None = None
    ) -> None:
        check_bind(host, token)
        self.app, self.host, self.port, self.token = create_app(tool, token), host, port, token
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, name="annotate-server", daemon=True)

    @property
    def url(self) -> str:
        """The server's base URL, without the token."""
        return page_url(self.host, self.port, None)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner, self.port = self._loop.run_until_complete(
                start_site(self.app, self.host, self.port)
            )
        except BaseException as error:  # reported by start()
            self._error = error
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> ServerThread:
        """Starts serving; re-raises a failure to bind."""
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        """Stops the server and waits for its thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Starts ``app`` on ``host:port``; returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


def serve(
    tool: AnnotationTool, host: str = "127.0.0.1", port: int = 8765, token: str | None = None
) -> None:
    """Serves ``tool`` until interrupted (Ctrl+C). Raises ValueError (see
    :func:`check_bind`) or OSError (the port is taken)."""
    check_bind(host, token)

    async def run() -> None:
        runner, bound = await start_site(create_app(tool, token), host, port)
        print(f"annotate: open {page_url(host, bound, token)}", flush=True)
        log.info(
            "serving %s (%s mode, annotator %s, session %s)",
            tool.folder.root,
            tool.mode,
            tool.annotator,
            tool.session,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        log.info("stopped; every accepted mask is saved in %s", tool.store.output)

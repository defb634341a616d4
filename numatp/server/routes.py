"""The HTTP side of `numatp serve`: a Starlette application over an Engine.

Endpoints: POST /v1/chat/completions and /v1/completions (whole, or streamed as
server-sent events: `data: {chunk}` lines, then `data: [DONE]`), GET /v1/models and
GET /health (never behind the API key: a load balancer's probe has none).

Every error a client can cause is an OpenAI-shaped JSON error with a 4xx status; an
unexpected one is a 500 of the same shape, its traceback logged, never sent. Parsing and
tokenizing a request runs in a worker thread, so a long prompt does not hold up the
streams of others. A client that goes away (a closed connection, mid-stream or while
waiting for a whole reply) cancels its request: its slot is free before the next step.
"""
import asyncio
import hmac
import json
import sys
import time
import traceback

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from numatp.server.engine import Job, QueueFull, ShuttingDown
from numatp.server.requests import ApiError, chat_body, completion_body

# A body larger than this is refused before it is read whole (prompts are bounded by the
# context anyway: the longest contexts hold about a million tokens).
MAX_BODY_BYTES = 64 << 20


def build_app(engine, model_name, api_key=None):
    llm = engine.llm
    created = int(time.time())

    async def chat_completions(request):
        return await _complete(request, lambda body: chat_body(llm, body, model_name), "chat")

    async def completions(request):
        return await _complete(request, lambda body: completion_body(llm, body, model_name),
                               "completion")

    async def _complete(request, parse, kind):
        _authorize(request, api_key)
        body = await _json_body(request)
        completion, stream, include_usage = await run_in_threadpool(parse, body)
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue()

        def send(chunks, end):   # from the engine's thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (chunks, end))
            except RuntimeError:   # the event loop has closed: the server is gone
                pass

        label = f" ({kind}{', streamed' if stream else ''} from {_client(request)})"
        job = Job(completion, send, label)
        try:
            engine.submit(job)
        except QueueFull:
            raise ApiError(503, f"the server is busy: all {engine.slots.n} slots are taken and "
                                f"{engine.queue_size} requests wait (--queue); retry later",
                           type="server_error", code="queue_full") from None
        except ShuttingDown:
            raise _shutting_down() from None
        if stream:
            return StreamingResponse(_events(engine, job, queue, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _whole(engine, job, queue, request)

    async def models(request):
        _authorize(request, api_key)
        return JSONResponse({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": created, "owned_by": "numatp",
             "meta": {"n_ctx": llm.ctx, "n_vocab": llm.config.vocab, "parallel": engine.slots.n}}]})

    async def health(request):
        return JSONResponse({"status": "ok", **engine.status()})

    routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/health", health, methods=["GET"])]
    handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error}
    return Starlette(routes=routes, exception_handlers=handlers)


def _client(request):
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


def _authorize(request, api_key):
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                             api_key.encode()):
        raise ApiError(401, "invalid or missing API key: send Authorization: Bearer KEY",
                       type="authentication_error", code="invalid_api_key")


async def _json_body(request):
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body over {MAX_BODY_BYTES >> 20} MiB")
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body over {MAX_BODY_BYTES >> 20} MiB")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:   # UnicodeDecodeError is a ValueError
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None


async def _events(engine, job, queue, include_usage):
    """The job's chunks as server-sent events. Closing this generator (the client went
    away, or the server stops) cancels the job."""
    usage = None
    try:
        while True:
            chunks, end = await queue.get()
            for chunk in chunks:
                # OpenAI sends the usage in a chunk of its own, and only when asked.
                usage = chunk.pop("usage", usage)
                yield _event(chunk)
            if end is None:
                break
            if end is not False:
                yield _event(_error(end).body())
                return
        if include_usage:
            yield _event({**{k: chunks[-1][k] for k in ("id", "object", "created", "model")},
                          "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"
    finally:
        engine.cancel(job)   # nothing if it finished


def _event(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _whole(engine, job, queue, request):
    """The job's chunks joined into one response; the job is cancelled if the client goes
    away while it runs."""
    gone = asyncio.ensure_future(_disconnected(request))
    chunks = []
    try:
        while True:
            got = asyncio.ensure_future(queue.get())
            await asyncio.wait({got, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not got.done():
                got.cancel()
                engine.cancel(job)
                return JSONResponse({}, status_code=499)   # nobody reads it
            part, end = got.result()
            chunks += part
            if end is None:
                return JSONResponse(job.request.chunks.joined(chunks))
            if end is not False:
                raise _error(end)
    finally:
        gone.cancel()
        engine.cancel(job)


async def _disconnected(request):
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _error(exc) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ShuttingDown):
        return _shutting_down()
    return ApiError(500, f"the request failed: {exc}", type="server_error")


def _shutting_down():
    return ApiError(503, "the server is shutting down", type="server_error",
                    code="shutting_down")


async def _api_error(request, exc):
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request, exc):
    # Starlette's own: an unknown path (404), a wrong method (405).
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(ApiError(exc.status_code, f"{request.method} {request.url.path}: "
                                 f"{exc.detail}", type=kind).body(),
                        status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _internal_error(request, exc):
    print(f"numatp: internal error on {request.method} {request.url.path}:", file=sys.stderr)
    traceback.print_exception(exc)
    return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}",
                                 type="server_error").body(), status_code=500)

"""`numatp serve`: the model behind an OpenAI-compatible HTTP API (numatp/server/).

Binds to loopback unless --host says otherwise; --api-key (or $NUMATP_API_KEY) makes
every endpoint but /health require `Authorization: Bearer KEY`. One line on stderr says
where it listens, once it does; one line per request says what it did. Ctrl-C or SIGTERM
stops it: the requests in flight end with an error event or a 503, the engine's thread
and the model's workers stop, and the command exits as any numatp command does on that
signal (130, or 143).
"""
import os
import sys

import typer

from numatp.cli.app import app
from numatp.cli.options import (CTX_SIZE, GPU, HF_REPO, MODEL, MOE_SPLIT, NODES, THREADS,
                                OptionalInt, OptionalStr, announce, gpu_lines, gpu_option,
                                model_option)
from numatp.errors import UsageError

DEFAULT_QUEUE = 64
LOOPBACK = ("127.0.0.1", "::1", "localhost")
# A stream still open this long after a stop signal is cut off: the engine has already
# ended every request, so only a client that does not read its socket is left.
GRACEFUL_S = 3


@app.command()
def serve(
    model: OptionalStr = MODEL,
    hf_repo: OptionalStr = HF_REPO,
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", help="TCP port (0: any free one; the line "
                                                  "on stderr says which)."),
    parallel: int = typer.Option(1, "-np", "--parallel",
                                 help="Sequences decoded together (slots), each with a KV "
                                      "cache of --ctx-size tokens."),
    queue: int = typer.Option(DEFAULT_QUEUE, "--queue",
                              help="Requests that may wait for a slot; beyond that a request "
                                   "gets 503."),
    api_key: OptionalStr = typer.Option(None, "--api-key", envvar="NUMATP_API_KEY",
                                        show_envvar=True,
                                        help="Require Authorization: Bearer KEY."),
    ctx_size: int = CTX_SIZE,
    threads: OptionalInt = THREADS,
    nodes: str = NODES,
    moe_split: str = MOE_SPLIT,
    gpu: OptionalStr = GPU,
    alias: OptionalStr = typer.Option(None, "-a", "--alias",
                                      help="The model's name in the API (default: its file "
                                           "name)."),
):
    """Serve the model over an OpenAI-compatible HTTP API: /v1/chat/completions,
    /v1/completions (streaming or not), /v1/models, /health."""
    import numatp
    from numatp.server.engine import Engine

    model = model_option(model, hf_repo)
    if parallel < 1:
        raise UsageError(f"invalid --parallel {parallel}: must be >= 1")
    if queue < 0:
        raise UsageError(f"invalid --queue {queue}: must be >= 0")
    if not 0 <= port <= 65535:
        raise UsageError(f"invalid --port {port}: must be from 0 to 65535")
    if ctx_size < 0:
        raise UsageError(f"invalid --ctx-size {ctx_size}: must be >= 0")
    if api_key is not None and not api_key:
        raise UsageError("empty --api-key")
    gpu = gpu_option(gpu)
    if gpu is not None and parallel != 1:
        # The GPU holds one sequence's keys and values (numatp/gpu/attention.py).
        raise UsageError(f"--gpu {gpu} serves one sequence at a time: --parallel must be 1")
    _check_can_bind(host, port)

    with numatp.load(model, nodes=nodes, threads=threads, ctx_size=ctx_size or None,
                     announce=announce, moe_split=moe_split, parallel=parallel, gpu=gpu) as llm:
        for line in getattr(llm.model, "placement_lines", list)():
            announce(line)
        llm.warm_up()
        for line in gpu_lines(llm):
            announce(line)
        name = alias or os.path.basename(llm.path)
        engine = Engine(llm, queue)
        try:
            _run_server(engine, name, host, port, api_key)
        finally:
            engine.stop()


def _check_can_bind(host, port):
    """A port in use or an address not of this machine, as one line before the model
    loads (uvicorn would log it and exit after loading)."""
    import socket
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"invalid --host {host!r}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def _run_server(engine, name, host, port, api_key):
    import uvicorn

    from numatp.server.routes import build_app

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # uvicorn waits for open connections to close: end the requests, so that
            # their streams do.
            super().handle_exit(sig, frame)
            engine.begin_stop()

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                bound = self.servers[0].sockets[0].getsockname()
                where = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
                auth = "" if api_key is None else ", API key required"
                print(f"numatp: serving {name} on http://{where}:{bound[1]}/v1 (parallel "
                      f"{engine.slots.n}, queue {engine.queue_size}{auth})", file=sys.stderr,
                      flush=True)
                if host not in LOOPBACK and api_key is None:
                    print(f"numatp: warning: listening on {host} without --api-key: anyone "
                          "who can reach this port can use the model", file=sys.stderr,
                          flush=True)

    config = uvicorn.Config(build_app(engine, name, api_key), host=host, port=port,
                            log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=GRACEFUL_S, server_header=False)
    server = Server(config)
    server.run()
    if not server.started:
        from numatp.errors import NumatpError
        raise NumatpError(f"could not listen on {host}:{port}")

"""`numatp chat`: a conversation in the terminal, turn by turn, with the model's chat template.

Replies stream to stdout; after each, one line on stderr says how many prompt tokens the
turn processed and how many it found in the KV cache (the history is not read again).
/clear forgets the conversation, /exit or Ctrl-D leaves. Ctrl-C stops a reply at its next
token and goes back to the prompt; a Ctrl-C at the prompt, or a second one before the
reply has stopped, leaves as Ctrl-C does anywhere in numatp.

From a terminal, a turn that fails (the conversation no longer fits the context, a
template that refuses it) is reported in one line and the chat goes on; with input from a
pipe or file it ends the run like any other error.
"""
import signal
import sys
from typing import Optional

import typer

from numatp.cli.app import app
from numatp.cli.options import (CTX_SIZE, GPU, HF_REPO, MIN_P, MODEL, MOE_SPLIT, NODES,
                                REPEAT_LAST_N, REPEAT_PENALTY, SEED, STOP, TEMP, THREADS,
                                TOP_K, TOP_P, OptionalInt, OptionalStr, StrList, announce,
                                gpu_lines, gpu_option, model_option, sampling_params)
from numatp.errors import UsageError

PROMPT = "> "
CLEAR, EXIT = "/clear", "/exit"


@app.command()
def chat(
    model: OptionalStr = MODEL,
    hf_repo: OptionalStr = HF_REPO,
    system: Optional[str] = typer.Option(None, "--system", help="System message."),
    n_predict: int = typer.Option(-1, "-n", "--n-predict",
                                  help="Most tokens per reply (-1: until the model ends it or "
                                       "the context is full)."),
    temp: float = TEMP,
    top_k: int = TOP_K,
    top_p: float = TOP_P,
    min_p: float = MIN_P,
    repeat_penalty: float = REPEAT_PENALTY,
    repeat_last_n: int = REPEAT_LAST_N,
    seed: int = SEED,
    ctx_size: int = CTX_SIZE,
    threads: OptionalInt = THREADS,
    nodes: str = NODES,
    moe_split: str = MOE_SPLIT,
    gpu: OptionalStr = GPU,
    stop: StrList = STOP,
):
    """Chat with the model in turns: /clear forgets the conversation, /exit or Ctrl-D
    leaves, Ctrl-C stops a reply. Each turn processes only its own tokens."""
    import numatp
    from numatp.cli.generate import as_text
    from numatp.conversation import Conversation
    from numatp.text_stream import checked_stops

    model = model_option(model, hf_repo)
    if n_predict == 0 or n_predict < -1:
        raise UsageError(f"invalid -n {n_predict}: give a positive count, or -1 for no limit")
    if ctx_size < 0:
        raise UsageError(f"invalid --ctx-size {ctx_size}: must be >= 0")
    if system is not None:
        as_text(system, "--system")
    stops = checked_stops([as_text(s, "--stop") for s in stop or ()])
    sampling_params(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)  # before loading
    gpu = gpu_option(gpu)
    options = dict(max_tokens=None if n_predict == -1 else n_predict, stop=stops,
                   temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                   repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                   seed=None if seed == -1 else seed)
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (input() then edits the line and keeps a history)
        except ImportError:
            pass

    with numatp.load(model, nodes=nodes, threads=threads, ctx_size=ctx_size or None,
                     announce=announce, moe_split=moe_split, gpu=gpu) as llm:
        if llm.tokenizer.chat_template is None:
            say("warning: the model has no chat template; chat uses ChatML, which it may not "
                "have been trained on")
        for line in getattr(llm.model, "placement_lines", list)():
            say(line)
        llm.warm_up()
        for line in gpu_lines(llm):
            say(line)
        conversation = Conversation(llm, system=system)
        say(f"chatting with {llm.path}: {CLEAR} forgets the conversation, {EXIT} or Ctrl-D "
            "leaves, Ctrl-C stops a reply")
        while True:
            text = read_turn(interactive)
            if text is None or text == EXIT:
                break
            if text == CLEAR:
                conversation.clear()
                say("conversation cleared")
            elif text:
                take_turn(conversation, text, options, interactive)


def read_turn(interactive):
    """The next user message, stripped; None at the end of the input."""
    try:
        line = input(PROMPT) if interactive else sys.stdin.readline()
    except EOFError:
        line = None
    if not line:
        if interactive:
            sys.stdout.write("\n")
        return None
    return line.strip()


def take_turn(conversation, text, options, interactive):
    from numatp.chat import TemplateError
    from numatp.errors import ContextError
    try:
        pieces = conversation.reply(text, **options)
    except (ContextError, TemplateError) as e:
        if not interactive:
            raise
        say(f"error: {e} ({CLEAR} starts a new conversation)")
        return
    with StopOnCtrlC() as ctrl_c:
        try:
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
                if ctrl_c.pressed:
                    break
        finally:
            pieces.close()
            sys.stdout.write("\n")
            sys.stdout.flush()
    report(conversation.stats, ctrl_c.pressed, conversation.llm.ctx)


def report(s, stopped, ctx):
    """llama.cpp prints its timings after each reply; this is the same on one line."""
    end = ("stopped (Ctrl-C)" if stopped else
           f"the context of {ctx} tokens is full ({CLEAR} starts over)"
           if s.stop_reason == "context" else None)
    # As in generate: the first token comes out of the prompt pass, so with one token
    # there was no decode step to time.
    generated = (f"generated {s.n_gen} tokens, {s.decode_tps:.1f} tok/s" if s.n_gen > 1 else
                 f"generated {s.n_gen} token{'' if s.n_gen == 1 else 's'} (no decode step)")
    say(f"prompt {s.n_prompt} tokens: {s.n_prompt_cached} cached, {s.n_prompt_processed} "
        f"processed, {s.prompt_tps:.1f} tok/s | {generated}" + (f" | {end}" if end else ""))


def say(line):
    sys.stdout.flush()
    print(f"numatp: {line}", file=sys.stderr, flush=True)


class StopOnCtrlC:
    """While a reply streams: the first Ctrl-C sets `pressed` (the reply stops at its next
    token, so nothing is cut off mid-step); a second one is handled as Ctrl-C is outside
    (the `numatp` command's handler: it leaves)."""

    def __enter__(self):
        self.pressed = False
        self._outer = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum, frame):
        if not self.pressed:
            self.pressed = True
        elif callable(self._outer):
            self._outer(signum, frame)
        else:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._outer)

"""A multi-turn chat with one model, whose history is read once.

Each turn's prompt is the whole conversation rendered with the model's chat template. Its
tokens are built as the previous turn's prompt tokens, the tokens the model generated, and
the tokens of the text the template adds after them (the end of the reply, the next user
message, the start of the next reply), the way llama.cpp's chat extends its context: the
model's own tokens are kept even where tokenizing the reply's text would give other ones
(BPE does not always split a text as the model wrote it). The KV cache holds that
sequence from the last turn, so only the new turn's tokens are processed (LLM's prompt
reuse). Where the template does not reproduce the history as the model saw it (some
templates strip or reformat earlier replies), or where the tokens so joined would not
read as the rendered text (a SentencePiece dummy space in front of the new part), the
rendered text is tokenized whole, and the cache is still used as far as the tokens agree.
"""
from numatp.chat import messages_prompt, template_stops
from numatp.sampling import SamplingParams
from numatp.text_stream import TextStream, checked_stops, text_pieces


class Conversation:
    """messages: the conversation so far (a system message first, if given).
    stats: the last reply's GenerationStats (n_prompt_cached, n_prompt_processed, ...)."""

    def __init__(self, llm, system=None):
        self.llm = llm
        self.system = system
        self.stats = None
        self.clear()

    def clear(self):
        """Start over: only the system message is left."""
        self.messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        self._seen = None   # (text, ids): what the model has read and written, as both

    def reply(self, text, max_tokens=None, stop=None, temperature=0.8, top_k=40, top_p=0.95,
              min_p=0.05, repeat_penalty=1.0, repeat_last_n=64, seed=None):
        """Send a user message; returns an iterator of the reply's text pieces. The turn
        joins the history when the reply ends, or when the iterator is closed early (the
        reply so far); not if it fails. Arguments are checked at this call."""
        params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty,
                                repeat_last_n, seed).validate()
        stops = checked_stops(stop) + template_stops(self.llm.tokenizer)
        messages = self.messages + [{"role": "user", "content": text}]
        prompt, ids = self._prompt(messages)
        stats, run = self.llm.generation(ids, max_tokens, params)
        pieces = text_pieces(run, TextStream(self.llm.tokenizer, stops), stats)
        return self._stream(pieces, messages, prompt, ids, stats)

    def _prompt(self, messages):
        tokenizer = self.llm.tokenizer
        text = messages_prompt(tokenizer, messages)
        self.llm.check_could_fit(text)
        seen = self._seen
        # With add_eos, a prompt's tokens end with an EOS that the next turn's must not have.
        whole = tokenizer.encode(text, add_special=True)
        if seen is not None and text.startswith(seen[0]) and not tokenizer.add_eos:
            spliced = seen[1] + tokenizer.encode(text[len(seen[0]):], add_special=False)
            # The spliced tokens must read as the text: SentencePiece puts its dummy space
            # in front of a continuation that does not begin with a special token, which
            # the model would read as a space the template never wrote.
            if tokenizer.decode(spliced, special=True) == tokenizer.decode(whole, special=True):
                return text, spliced
        return text, whole

    def _stream(self, pieces, messages, prompt, ids, stats):
        shown, ended = [], False
        self.stats = stats
        try:
            for piece in pieces:
                shown.append(piece)
                yield piece
            ended = True
        except GeneratorExit:
            ended = True
            pieces.close()
            raise
        finally:
            if ended:
                self._add_turn(messages, prompt, ids, "".join(shown), list(stats.tokens))

    def _add_turn(self, messages, prompt, ids, reply, reply_ids):
        self.messages = messages + [{"role": "assistant", "content": reply}]
        # The generated tokens stand for the reply only if they decode to exactly it (a
        # stop string cuts the text short of them; an interrupted reply may hold back the
        # bytes of a character).
        from numatp.tokenizer import StreamDecoder
        decoder = StreamDecoder(self.llm.tokenizer, at_start=False)
        written = "".join(decoder.feed(t) for t in reply_ids) + decoder.flush()
        self._seen = (prompt + reply, ids + reply_ids) if written == reply else (prompt, ids)

"""Generated tokens as the text to show: whole UTF-8 characters, ending before a stop string.

A stop string may arrive split over several tokens ("<|", "end", "|>"), and text streams
as it is generated, so the end of the text that could still be the beginning of a stop
string is held back until the next tokens decide: it is shown if the text goes on
differently, never if it completes the stop string. The text shown is the same whether it
is read piece by piece or all at once.
"""
from contextlib import closing

from numatp.errors import UsageError


def checked_stops(stop) -> tuple:
    """`stop` as OpenAI's APIs take it (None, a string, or a list of strings), as a tuple."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)):
        raise UsageError(f"invalid stop {stop!r}: give a string or a list of strings")
    for s in stop:
        if not isinstance(s, str) or not s:
            raise UsageError(f"invalid stop string {s!r}: stop strings are non-empty strings")
    return tuple(stop)


class StopStrings:
    """feed(text) returns the part of the text so far that can be shown; once a stop string
    has appeared, `stopped` is set and nothing from it on is ever returned."""

    def __init__(self, stops=()):
        self.stops = tuple(stops)
        self.stopped = False
        self._held = ""

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        # Text shown earlier cannot contain the start of a match: whatever could have
        # started one was held back. So the search covers only what is held and the new text.
        buf = self._held + text
        found = self._first_stop(buf)
        # where a stop string may begin that the text so far has not completed: one that
        # begins before a stop string found here would be the first, if it completes
        held_from = len(buf) - max(self._partial_match(buf, s) for s in self.stops)
        if found is not None and found <= held_from:
            self.stopped, self._held = True, ""
            return buf[:found]
        self._held = buf[held_from:]
        return buf[:held_from]

    def flush(self) -> str:
        """What is held back, at the end of a generation: up to the stop string in it, if
        one was found there while a longer one that began earlier could still follow."""
        held, self._held = self._held, ""
        if self.stopped:
            return ""
        found = self._first_stop(held)
        if found is not None:
            self.stopped = True
            return held[:found]
        return held

    def _first_stop(self, buf):
        found = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else None

    @staticmethod
    def _partial_match(buf, stop) -> int:
        """Length of the longest end of `buf` that begins `stop` (and is shorter than it)."""
        for k in range(min(len(stop) - 1, len(buf)), 0, -1):
            if buf.endswith(stop[:k]):
                return k
        return 0


class TextStream:
    """Feeds generated token ids through the tokenizer's stream decoder and the stop
    strings. Offsets count characters of the decoded text (before any cut), so that a
    token's offset says where its text starts in the reply."""

    def __init__(self, tokenizer, stops=()):
        from numatp.tokenizer import StreamDecoder
        # The reply continues the prompt: a SentencePiece leading space is kept.
        self._decoder = StreamDecoder(tokenizer, at_start=False)
        self._stops = StopStrings(stops)
        self.decoded = 0   # characters decoded so far
        self.shown = 0     # characters released to be shown

    @property
    def stopped(self) -> bool:
        return self._stops.stopped

    def feed(self, token: int) -> tuple:
        """(text to show now, offset of this token's text in the decoded reply)."""
        offset = self.decoded
        piece = self._decoder.feed(token)
        self.decoded += len(piece)
        return self._release(self._stops.feed(piece)), offset

    def finish(self) -> str:
        """The rest, once no more tokens come: an incomplete character as U+FFFD, and what
        was held back for a stop string that did not come."""
        rest = self._decoder.flush()
        self.decoded += len(rest)
        text = self._stops.feed(rest)
        return self._release(text + self._stops.flush())

    def _release(self, text):
        self.shown += len(text)
        return text


def text_pieces(run, stream: TextStream, stats):
    """The text of a generation `run` (an iterator of (token, logits) that holds the
    model), in pieces, through `stream`. A stop string ends the run at once, with
    stats.stop_reason "stop"."""
    with closing(run):
        for token, _ in run:
            text, _ = stream.feed(token)
            if text:
                yield text
            if stream.stopped:
                break
    if not stream.stopped:
        rest = stream.finish()
        if rest:
            yield rest
    if stream.stopped:
        stats.stop_reason = "stop"

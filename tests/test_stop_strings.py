"""Stop strings on streamed text: the text shown ends just before the first stop string,
however the text is split into pieces, and nothing of a stop string is ever shown."""
import pytest
from hypothesis import given, settings, strategies as st

from numatp.errors import UsageError
from numatp.text_stream import StopStrings, checked_stops


def shown(pieces, stops):
    s = StopStrings(stops)
    out = [s.feed(p) for p in pieces]
    return out + [s.flush()], s.stopped


def expected(text, stops):
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(found)], True) if found else (text, False)


def test_a_stop_string_split_over_pieces_is_held_back_then_dropped():
    out, stopped = shown(["Hello <|", "im_", "end|> more"], ["<|im_end|>"])
    assert out == ["Hello ", "", "", ""] and stopped


def test_held_text_is_shown_when_the_text_goes_on_differently():
    out, stopped = shown(["a <", "|b", " c"], ["<|im_end|>"])
    assert out == ["a ", "<|b", " c", ""] and not stopped
    # ... and at the end of the generation, if it never went on.
    out, stopped = shown(["a <|im"], ["<|im_end|>"])
    assert out == ["a ", "<|im"] and not stopped


def test_the_earliest_of_several_stop_strings_wins():
    assert shown(["one two three"], ["three", "two"]) == (["one ", ""], True)
    assert shown(["xyz"], ["yz", "xy"]) == (["", ""], True)


text_alphabet = st.sampled_from("ab<|>\n é")


@settings(max_examples=300, deadline=None)
@given(text=st.text(text_alphabet, max_size=40),
       cuts=st.lists(st.integers(0, 40), max_size=8),
       stops=st.lists(st.text(text_alphabet, min_size=1, max_size=4), min_size=1, max_size=3))
def test_any_split_shows_the_text_up_to_the_first_stop(text, cuts, stops):
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    out, stopped = shown(pieces, stops)
    want, want_stopped = expected(text, stops)
    assert ("".join(out), stopped) == (want, want_stopped)


def test_checked_stops():
    assert checked_stops(None) == ()
    assert checked_stops("x") == ("x",)
    assert checked_stops(["x", "y"]) == ("x", "y")
    for bad in ("", [""], [1], 3, {"x"}):
        with pytest.raises(UsageError, match="stop"):
            checked_stops(bad)

"""A multi-turn chat in the library (numatp.conversation): each turn's prompt is the whole
conversation, yet only the new turn is processed, because the KV cache still holds the
history as the model read and wrote it."""
import pytest

import numatp
import synth
from models import STORIES
from numatp.chat import messages_prompt
from numatp.conversation import Conversation
from numatp.errors import ContextError, UsageError
from numatp.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def q8_path(tmp_path_factory):
    # Byte-level BPE (no dummy space), quantized (reused tokens give bitwise the logits
    # of a fresh pass). Greedy, this seed's replies end by length and once (turn 5) by
    # its end-of-generation token: both ways a reply can leave the cache.
    return synth.write_model(tmp_path_factory.mktemp("conv") / "q8.gguf", qtype="Q8_0",
                             seed=12, ctx=2048)


def test_ten_turns_each_process_only_the_new_turn(q8_path):
    with numatp.load(q8_path, nodes=1) as llm, numatp.load(q8_path, nodes=1) as fresh:
        tok = llm.tokenizer
        chat = Conversation(llm, system="Be brief.")
        prev = None   # (rendered text, prompt ids, reply, reply ids, stop reason)
        reasons = set()
        for turn in range(10):
            reply = "".join(chat.reply(f"question number {turn}?", max_tokens=8, temperature=0))
            s = chat.stats
            text = messages_prompt(tok, chat.messages[:-1])
            if prev is None:
                assert s.prompt_tokens == tok.encode(text) and s.n_prompt_cached == 0
            else:
                p_text, p_ids, p_reply, p_reply_ids, p_reason = prev
                new = tok.encode(text[len(p_text + p_reply):], add_special=False)
                # The history as the model read and wrote it, then the new turn.
                assert s.prompt_tokens == p_ids + p_reply_ids + new
                # A reply cut by length leaves its last token unprocessed (it was never
                # fed back); one ended by the end-of-generation token leaves none.
                unfed = 1 if p_reason == "length" else 0
                assert s.n_prompt_cached == len(p_ids) + len(p_reply_ids) - unfed
                assert s.n_prompt_processed == len(new) + unfed
            reasons.add(s.stop_reason)
            prev = (text, s.prompt_tokens, reply, list(s.tokens), s.stop_reason)
        assert reasons == {"length", "eos"}
        # What a model that reads the whole conversation from scratch replies.
        assert list(fresh.generate_ids(prev[1], 8, GREEDY)) == prev[3]


def test_a_sentencepiece_turn_reads_as_the_rendered_text():
    """With a dummy-prefix tokenizer, tokenizing the new part alone would put a space in
    front of it ("▁<|im_end|>" after the reply) that the template never wrote; such a
    turn is tokenized whole instead, reusing the cache as far as the tokens agree."""
    with numatp.load(STORIES, nodes=1, ctx_size=512) as llm:
        tok = llm.tokenizer
        assert tok.add_space_prefix and tok.chat_template is None   # ChatML as text
        chat = Conversation(llm)
        "".join(chat.reply("Hi", max_tokens=6, temperature=0))
        "".join(chat.reply("Tell me more", max_tokens=6, temperature=0))
        text = messages_prompt(tok, chat.messages[:-1])
        assert chat.stats.prompt_tokens == tok.encode(text)
        assert chat.stats.n_prompt_cached > 0


def test_clear_starts_over_with_the_system_message(q8_path):
    with numatp.load(q8_path, nodes=1) as llm:
        chat = Conversation(llm, system="Be brief.")
        "".join(chat.reply("first", max_tokens=4, temperature=0))
        first = list(chat.stats.prompt_tokens)
        "".join(chat.reply("second", max_tokens=4, temperature=0))
        chat.clear()
        assert chat.messages == [{"role": "system", "content": "Be brief."}]
        "".join(chat.reply("first", max_tokens=4, temperature=0))
        assert chat.stats.prompt_tokens == first


def test_a_reply_closed_early_joins_the_history_as_far_as_it_went(q8_path):
    with numatp.load(q8_path, nodes=1) as llm:
        chat = Conversation(llm)
        pieces = chat.reply("go on", max_tokens=50, temperature=0)
        shown = next(pieces)
        pieces.close()
        assert chat.messages[-1] == {"role": "assistant", "content": shown}
        assert chat.messages[-2] == {"role": "user", "content": "go on"}
        "".join(chat.reply("and then?", max_tokens=4, temperature=0))
        assert chat.messages[-3]["content"] == shown


def test_bad_arguments_raise_at_the_call_and_leave_the_history(q8_path):
    with numatp.load(q8_path, nodes=1, ctx_size=128) as llm:
        chat = Conversation(llm)
        with pytest.raises(UsageError, match="temperature"):
            chat.reply("hi", temperature=-1)
        with pytest.raises(UsageError, match="stop"):
            chat.reply("hi", stop=[""])
        with pytest.raises(UsageError, match="max_tokens"):
            chat.reply("hi", max_tokens="many")
        with pytest.raises(ContextError, match="does not fit the context"):
            chat.reply("x" * 2000)
        assert chat.messages == []
        assert "".join(chat.reply("hi", max_tokens=3, temperature=0)) == \
            "".join(Conversation(llm).reply("hi", max_tokens=3, temperature=0))

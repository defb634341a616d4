"""Chat templates rendered as transformers renders them, and the prompts they give."""
from functools import lru_cache

import pytest

from numatp.chat import CHATML_TEMPLATE, chat_prompt, render_chat
from numatp.errors import NumatpError
from numatp.tokenizer import load_tokenizer

from models import STORIES, vocab_gguf



@lru_cache(maxsize=None)
def tokenizer(name):
    return load_tokenizer(STORIES if name == "stories260K" else vocab_gguf(name))


def test_qwen2_template_renders_chatml():
    tok = tokenizer("qwen2")
    assert tok.chat_template is not None
    assert chat_prompt(tok, "Hello") == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
        "<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert chat_prompt(tok, "Hello", system="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_qwen2_prompt_encodes_special_tokens_as_single_ids():
    tok = tokenizer("qwen2")
    ids = tok.encode(chat_prompt(tok, "Hello"))
    assert ids[0] == tok.token_to_id("<|im_start|>")
    assert ids.count(tok.token_to_id("<|im_end|>")) == 2


def test_without_template_falls_back_to_chatml():
    tok = tokenizer("stories260K")
    assert tok.chat_template is None
    assert chat_prompt(tok, "Hi", system="S") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert render_chat(None, [{"role": "user", "content": "x"}], add_generation_prompt=False) == \
        render_chat(CHATML_TEMPLATE, [{"role": "user", "content": "x"}], add_generation_prompt=False)


def test_template_that_writes_bos_gets_one_bos():
    tok = tokenizer("phi-3")                  # its template starts with {{ bos_token }}
    prompt = chat_prompt(tok, "Hi")
    assert prompt == "<s><|user|>\nHi<|end|>\n<|assistant|>\n"
    ids = tok.encode(prompt)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1


def test_raise_exception_becomes_numatp_error():
    template = ("{% if messages[0]['role'] != 'user' %}"
                "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
                "{% endif %}")
    with pytest.raises(NumatpError, match="Conversation roles must alternate user/assistant"):
        render_chat(template, [{"role": "assistant", "content": "x"}])


def test_broken_and_unsafe_templates_are_numatp_errors():
    with pytest.raises(NumatpError, match="does not parse"):
        render_chat("{% for %}", [])
    with pytest.raises(NumatpError, match="unsafe"):
        render_chat("{{ messages.append(1) }}", [])      # the environment is immutable


def test_transformers_environment():
    messages = [{"role": "user", "content": "é"}]
    # trim_blocks + lstrip_blocks: block tags leave no blank lines or indentation behind
    template = "{% for m in messages %}\n    {% if true %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}"
    assert render_chat(template, messages) == "[é]\n"
    # tojson keeps non-ASCII text; loop controls are available
    assert render_chat("{{ messages[0] | tojson }}", messages) == '{"role": "user", "content": "é"}'
    assert render_chat("{% for i in [1,2,3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}",
                       messages) == "1"
    assert len(render_chat("{{ strftime_now('%Y-%m-%d') }}", messages)) == 10
    assert render_chat("{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}", messages,
                       bos_token="<s>", eos_token="</s>") == "<s>|</s>|True"

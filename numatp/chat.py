"""Chat prompts: render a model's Jinja chat template the way Hugging Face transformers
does, so a GGUF file's `tokenizer.chat_template` gives the prompt the model was trained on.

transformers renders in a sandboxed, immutable Jinja environment with trim_blocks and
lstrip_blocks, the loop-controls extension, a `tojson` filter that keeps non-ASCII text
as is, and two functions templates rely on: raise_exception(message) and
strftime_now(format). The template sees `messages`, `add_generation_prompt`, the special
token texts (bos_token, eos_token) and any extra variables passed through.

A file without a template gets ChatML, as llama.cpp does.

Templates come inside model files, so they render in numatp.bounded_jinja's sandbox,
which bounds their time and memory as well; whatever goes wrong in one (a loop that
never ends, a division by zero, a raise_exception) is one TemplateError line.

Encoding a rendered prompt: templates that write the BOS token themselves are common;
Tokenizer.encode does not add a second one (it skips BOS when the text already starts
with it), so `tokenizer.encode(chat_prompt(...))` is the right call either way.
"""
import json
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext

from numatp.bounded_jinja import BoundedEnvironment, BudgetExceeded
from numatp.errors import NumatpError, UsageError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(NumatpError):
    """A chat template that does not parse, or refused the conversation."""


MAX_TEMPLATE_CHARS = 1 << 20   # the largest templates in use are ~20 KB
MAX_MESSAGE_CHARS = 300         # of an error's text, so that it stays one readable line


class _Raised(Exception):
    """raise_exception() from inside a template; carries the template's own message."""


def _raise_exception(message):
    raise _Raised(str(message))


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Like transformers: non-ASCII stays readable in the prompt (json.dumps' default
    # would turn "é" into "\u00e9", which the model never saw in training).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile(template: str):
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"the model's chat template is {len(template):,} characters long "
                            f"(at most {MAX_TEMPLATE_CHARS:,} are accepted)")
    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True,
                             extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.bound_filters_and_tests()
    try:
        return env.compile_bounded(template)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template does not parse: {_one_line(e.message)} "
                            f"(line {e.lineno})") from None
    except RecursionError:
        raise TemplateError("chat template does not parse: nested too deeply") from None


def render_chat(template, messages, add_generation_prompt=True, bos_token="", eos_token="",
                **variables) -> str:
    """The prompt text for `messages` (a list of {"role": ..., "content": ...}).
    `template` None means ChatML. Extra keyword arguments (tools, documents, ...) are
    passed to the template."""
    compiled = _compile(template if template else CHATML_TEMPLATE)
    try:
        return compiled.environment.render(
            compiled, messages=list(messages), add_generation_prompt=add_generation_prompt,
            bos_token=bos_token, eos_token=eos_token, **variables)
    except _Raised as e:
        raise TemplateError(f"chat template: {_one_line(e)}") from None
    except (BudgetExceeded, jinja2.TemplateError) as e:   # budget, undefined names, sandbox
        raise TemplateError(f"the model's chat template failed: {_one_line(e)}") from None
    except Exception as e:   # OverflowError, ZeroDivisionError, RecursionError, TypeError...
        raise TemplateError(f"the model's chat template failed: {_one_line(e)} "
                            f"({type(e).__name__})") from None


def _one_line(message) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


def special_token_text(tokenizer, token_id) -> str:
    return "" if token_id is None else tokenizer.token_text(token_id)


def chat_prompt(tokenizer, user_text, system=None, history=()) -> str:
    """The prompt for one user turn (after an optional system message and earlier
    turns), ending where the assistant's reply begins."""
    messages = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.extend(history)
    messages.append({"role": "user", "content": user_text})
    return messages_prompt(tokenizer, messages)


def messages_prompt(tokenizer, messages) -> str:
    """The prompt for a conversation, ending where the assistant's next reply begins."""
    return render_chat(tokenizer.chat_template, messages, add_generation_prompt=True,
                       bos_token=special_token_text(tokenizer, tokenizer.bos_id),
                       eos_token=special_token_text(tokenizer, tokenizer.eos_id))


def template_stops(tokenizer) -> tuple:
    """Stop strings a reply needs beyond the model's end-of-generation tokens: with the
    ChatML fallback, the model may not have <|im_end|> as a token and write it as text."""
    return () if tokenizer.chat_template else ("<|im_end|>",)


def checked_messages(messages) -> list:
    """OpenAI-style messages as the templates take them: dicts with a "role" string and
    a "content" string (None is empty; a list of {"type": "text", "text": ...} parts is
    joined). Other keys pass through to the template."""
    if isinstance(messages, (str, dict)) or not isinstance(messages, (list, tuple)) or not messages:
        raise UsageError("messages must be a non-empty list of {\"role\": ..., \"content\": ...}")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise UsageError(f"messages[{i}] is not a message: it needs a \"role\" string")
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            if not all(isinstance(part, dict) and part.get("type") == "text"
                       and isinstance(part.get("text"), str) for part in content):
                raise UsageError(f"messages[{i}]: only text content parts "
                                 "({\"type\": \"text\", \"text\": ...}) are supported")
            content = "".join(part["text"] for part in content)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise UsageError(f"messages[{i}]: content must be a string, not "
                             f"{type(content).__name__}")
        checked.append({**message, "content": content})
    return checked

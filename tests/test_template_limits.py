"""Hostile chat templates: a template inside a model file cannot run code (jinja2's
sandbox), and cannot hang `--chat`, allocate gigabytes or end in a traceback either:
each ends, quickly, in one TemplateError line, from the library and from the CLI.

Sizes are chosen so that without the limits each case would still end (in hundreds of
megabytes, a TimeoutError from the hang guard, or a traceback) rather than take the
machine down.
"""
import subprocess
import sys
import tracemalloc

import pytest

from numatp.chat import MAX_TEMPLATE_CHARS, TemplateError, render_chat
from robust import error_line, hang_guard, run_main
from synth import write_model

MAX_ALLOC = 64 << 20   # rendering a real template takes kilobytes; the cases ask for 100s of MB
MESSAGES = [{"role": "user", "content": "hi"}]

# (what, template, words of the message)
ENDLESS = [
    ("huge power", "{{ 9 ** (9 ** 7) }}", "too large a number"),
    ("squaring in a loop", "{% set ns = namespace(x=3) %}{% for i in range(24) %}"
     "{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x > 0 }}", "product of more than"),
    ("nested ranges", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
     "{% endfor %}", "steps"),
    ("nested loops over a string", "{% set s = 'x' * 1000 %}{% for a in s %}{% for b in s %}"
     "{% for c in s %}{% endfor %}{% endfor %}{% endfor %}", "steps"),
    ("recursive loop", "{% for x in [1, 2, 3] recursive %}{% if loop.depth < 40 %}"
     "{{ loop([1, 2, 3]) }}{% endif %}{% endfor %}", "steps"),
]
HUGE = [
    ("repeated string", "{{ ('x' * 300000000)|length }}", "characters"),
    ("repeated list", "{{ ([0] * 30000000)|length }}", "characters"),
    ("padding filter", "{{ 'a'|center(300000000) }}", "characters"),
    ("padding method", "{{ 'a'.rjust(300000000) }}", "characters"),
    ("printf width", "{{ '%0300000000d' % 1 }}", "characters"),
    ("printf width from an argument", "{{ '%*d' % (300000000, 1) }}", "characters"),
    ("format filter width", "{{ '%0300000000d'|format(1) }}", "characters"),
    ("str.format width", "{{ '{:>300000000}'.format(1) }}", "characters"),
    ("doubling with ~", "{% set ns = namespace(s='ab') %}{% for i in range(28) %}"
     "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}", "characters"),
    ("doubling with +", "{% set ns = namespace(s='ab') %}{% for i in range(28) %}"
     "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}", "characters"),
    ("one string many times as text", "{% set a = ['x' * 1000] * 1000 %}{{ [a] * 300 }}",
     "characters"),
    ("one string many times as JSON", "{% set a = ['x' * 1000] * 1000 %}{{ ([a] * 300)|tojson }}",
     "characters"),
    ("join", "{{ (['x' * 1000] * 100000)|join('y' * 3000) }}", "characters"),
    ("str.join", "{{ ('y' * 3000).join(['x' * 1000] * 100000) }}", "characters"),
    ("replace", "{{ ('x' * 1000000)|replace('x', 'y' * 300) }}", "characters"),
    ("indent", "{{ ('x\n' * 1000000)|indent(300) }}", "characters"),
    ("batch padding", "{{ [1]|batch(30000000, 'x')|list|length }}", "characters"),
    ("literal text in a loop", "{% macro m() %}{% for i in range(30000) %}" + "L" * 10000
     + "{% endfor %}{% endmacro %}{{ m()|length }}", "characters"),
    ("range too big", "{{ range(10 ** 9)|list|length }}", "Range too big"),
    ("lipsum", "{{ lipsum(300000) }}", "'lipsum' is undefined"),
    ("too long", "x" * (MAX_TEMPLATE_CHARS + 1), "characters long"),
]
BROKEN = [
    ("division by zero", "{{ 1 / 0 }}", "division by zero (ZeroDivisionError)"),
    ("float overflow", "{{ 1.0e300 ** 10 }}", "(OverflowError)"),
    ("endless recursion", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "(RecursionError)"),
    ("type error", "{{ 'a' + 1 }}", "(TypeError)"),
    ("nested too deeply to parse", "{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}",
     "nested too deeply"),
]


def ids(cases):
    return [c[0] for c in cases]


def rendering_error(template, messages=MESSAGES):
    """The message of the TemplateError rendering `template` raises; a hang fails."""
    with hang_guard():
        with pytest.raises(TemplateError) as e:
            render_chat(template, messages)
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("what, template, words", ENDLESS + BROKEN, ids=ids(ENDLESS + BROKEN))
def test_template_that_would_not_end_or_fails(what, template, words):
    message = rendering_error(template)
    assert message.startswith(("the model's chat template failed: ",
                               "chat template does not parse: ")), message
    assert words in message, message


@pytest.mark.parametrize("what, template, words", HUGE, ids=ids(HUGE))
def test_template_that_would_fill_memory(what, template, words):
    """Refused before the allocation, not after."""
    tracemalloc.start()
    try:
        message = rendering_error(template)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert words in message, message
    assert peak < MAX_ALLOC, f"rendering allocated {peak / 2**20:.0f} MiB"


def test_limits_grow_with_the_conversation():
    """A long conversation through a template that copies every message a few times
    renders: the allowances are proportional to what is rendered."""
    template = ("{% for m in messages %}{{ m.content|upper }}{{ m.content|replace('a', 'b') }}"
                "{{ m|tojson }}{% endfor %}")
    messages = [{"role": "user", "content": "a" * 1000}] * 5000
    assert len(render_chat(template, messages)) > 15_000_000


def test_ordinary_templates_render_as_before():
    template = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                "{{ '%s: %s' % (m.role, m.content.strip()) }}|{{ '{}/{}'.format(loop.index, "
                "messages|length) }}|{{ m.content.split(',')|join('+') }}|{{ m|tojson(indent=2) }}"
                "{% endfor %}{{ ns.n }}{{ 2 ** 10 }}{{ 'ab' * 3 }}{{ [1, 2] + [3] }}"
                "{{ range(3)|list }}{{ 'x'|center(5) }}{{ 1700000000 }}")
    messages = [{"role": "user", "content": " a,b "}, {"role": "assistant", "content": "c"}]
    assert render_chat(template, messages) == (
        'user: a,b|1/2| a+b |{\n  "role": "user",\n  "content": " a,b "\n}'
        'assistant: c|2/2|c|{\n  "role": "assistant",\n  "content": "c"\n}'
        "21024ababab[1, 2, 3][0, 1, 2]  x  1700000000")


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory):
    def make(template):
        path = tmp_path_factory.mktemp("template") / "m.gguf"
        return write_model(path, qtype="F32", n_layers=1, vocab=300, chat_template=template)
    return make


CLI_CASES = [c for c in ENDLESS + HUGE + BROKEN
             if c[0] in ("nested ranges", "repeated string", "division by zero", "type error")]


@pytest.mark.parametrize("what, template, words", CLI_CASES, ids=ids(CLI_CASES))
def test_hostile_template_through_the_cli(hostile_model, monkeypatch, capsys, what, template, words):
    path = hostile_model(template)
    with hang_guard():
        code, out, err = run_main(["generate", "hi", "-m", path, "--chat"], monkeypatch, capsys)
    assert code == 1 and out == ""
    line = error_line(err)
    assert line.startswith("the model's chat template failed: ") and words in line


def test_huge_power_in_a_real_process(hostile_model):
    """9 ** 9 ** 9 in one C call could not be interrupted: refused before it starts."""
    path = hostile_model("{{ 9 ** (9 ** 9) }}")
    r = subprocess.run([sys.executable, "-m", "numatp", "generate", "hi", "-m", str(path), "--chat"],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and r.stdout == ""
    assert "too large a number" in error_line(r.stderr)

"""A Jinja sandbox that also bounds what a template may spend.

Chat templates come inside model files, so they are untrusted. jinja2's sandbox keeps a
template away from Python's internals, but not from spending without limit:
`{{ 9 ** 9 ** 9 }}` computes for hours in one C call, nested `range` loops run 10^15
iterations, `'x' * 10**10` asks for 10 GB. BoundedEnvironment.render charges each
rendering against a Budget and stops it with BudgetExceeded:

- steps (time): every loop iteration, call, filter, test, attribute or item lookup,
  intercepted operator and output is a step. STEPS_BASE of them take a fraction of a
  second; the allowance grows with the size of what is rendered (a template spends a
  few dozen steps per message: 184,000 for a 6,000-message conversation through
  Qwen3's template). A wall-clock deadline, checked at every step, backs this up for
  steps that are slow on their own.
- size (memory): every string, list or dict an operation makes is charged its length
  in characters or items. An operation that can make a result far larger than its
  inputs (repetition, powers, padding widths, joins, replacement, formatting, turning a
  list that holds one string many times into text) is charged an upper bound of its
  result *before* it runs, so the allocation never happens. This allowance grows with
  the size of what is rendered too (a long conversation renders to a long prompt).

Charges are upper bounds up to a small constant factor (escaping filters can write up
to 12 characters for one, a list item costs more bytes than a character), which is
what keeps a template's memory to megabytes rather than gigabytes; they are not exact.
"""
import re
import string
import time
from collections.abc import Mapping
from contextvars import ContextVar
from functools import wraps

import jinja2.sandbox
from jinja2 import nodes
from jinja2.runtime import LoopContext
from jinja2.utils import Namespace

STEPS_BASE = 200_000          # steps a rendering may take, plus...
STEPS_PER_INPUT = 1           # ...this many per character of its variables
SIZE_BASE = 1 << 22           # characters or items a rendering may make, plus...
SIZE_PER_INPUT = 32           # ...this many per character of its variables
MAX_SECONDS = 10.0
MAX_INT_BITS = 1 << 14        # larger than any number a prompt needs; str() stops at 4300 digits

# Filters that build text from their whole input. Each charges (input + 1) x (1 + its
# arguments' weight), which bounds what replace(old, new), indent(width), join(sep),
# center(width), wordwrap(..., wrapstring), truncate(..., end), tojson(indent) make.
# (`format` and `sum` have rules of their own.)
COPYING_FILTERS = frozenset({
    "capitalize", "center", "e", "escape", "forceescape", "indent", "join", "lower",
    "pprint", "replace", "safe", "string", "striptags", "title", "tojson", "trim",
    "truncate", "upper", "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr",
})
# Filters that make as many things as an integer argument says.
COUNTING_FILTERS = frozenset({"batch", "slice"})
# str methods whose result can be larger than the string times their arguments (the
# others make at most about the string again: split, strip, upper...; the str.format
# family has its own rule).
GROWING_METHODS = frozenset({
    "replace", "join", "center", "ljust", "rjust", "zfill", "expandtabs", "translate",
    "encode",
})

# Names of the internal filters the template is rewritten to call. A space cannot occur
# in a filter name written in a template, so no template can call them itself.
_LOOP, _TEXT = "numatp loop", "numatp text"

_PRINTF_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?")


class BudgetExceeded(Exception):
    """A template went past one of its limits."""


class Budget:
    """What one rendering may still spend."""

    def __init__(self, input_size):
        self.steps = self.step_limit = STEPS_BASE + STEPS_PER_INPUT * input_size
        self.size = self.size_limit = SIZE_BASE + SIZE_PER_INPUT * input_size
        self.deadline = time.monotonic() + MAX_SECONDS

    def step(self):
        self.steps -= 1
        if self.steps < 0:
            raise BudgetExceeded(f"it ran more than {self.step_limit:,} steps (loop "
                                 "iterations, calls, operators)")
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"it ran longer than {MAX_SECONDS:g} s")

    def charge(self, amount):
        self.size -= amount
        if self.size < 0:
            raise BudgetExceeded(f"it built more than {self.size_limit:,} characters of text "
                                 "and data")


_active: ContextVar = ContextVar("numatp_template_budget", default=None)


def _budget() -> Budget:
    budget = _active.get()
    if budget is None:
        # Only Jinja's compile-time constant folding calls in here without a rendering;
        # refusing makes it leave the expression to run time, under a budget.
        raise BudgetExceeded("not rendering")
    return budget


def text_size(value, limit=float("inf"), per_level=0) -> int:
    """About how many characters str(), repr() or json.dumps() of `value` write, plus
    `per_level` per nesting level of each item (indentation). A list that holds one
    string a thousand times counts it a thousand times, as its text does. Stops
    counting once past `limit`; iterative, so deep nesting cannot overflow the stack."""
    total, stack = 0, [(value, 0)]
    while stack and total <= limit:
        v, depth = stack.pop()
        total += 2 + per_level * depth
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, (bytes, bytearray)):
            total += 4 * len(v)
        elif isinstance(v, bool) or v is None:
            total += 5
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1
        elif isinstance(v, Namespace):
            stack.append((object.__getattribute__(v, "_Namespace__attrs"), depth))
        elif isinstance(v, Mapping):
            total += 2 * len(v)
            if total <= limit:
                stack.extend((x, depth + 1) for item in v.items() for x in item)
        elif isinstance(v, (list, tuple, set, frozenset, type({}.keys()), type({}.values()),
                            type({}.items()))):
            total += len(v)
            if total <= limit:
                stack.extend((x, depth + 1) for x in v)
        else:
            total += 24   # numbers, undefined values, macros, loop objects: short texts
    return total


def _weight(args, kwargs=None) -> int:
    """How much a call's arguments can multiply its output by: an integer counts as its
    value (a width, a count), anything else as the length of its text."""
    total = 0
    for a in list(args) + list((kwargs or {}).values()):
        if isinstance(a, int) and not isinstance(a, bool):
            total += max(a, 0)
        else:
            total += text_size(a)
    return total


def _counts(values) -> int:
    return sum(max(v, 0) for v in values if isinstance(v, int) and not isinstance(v, bool))


def _shallow_size(value) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict, set)) else 0


def _format_cost(fmt, fields, widths, values, widths_from_values) -> int:
    """An upper bound of a formatted string: each field may write any of the values (a
    named field may repeat one) padded to its width, which a `*` or nested field takes
    from the values."""
    cost = len(fmt) + (fields + 1) * (text_size(values) + 1) + widths
    return cost + (_counts(values) if widths_from_values else 0)


def printf_cost(fmt, values) -> int:
    """For `fmt % values` (Jinja's `format` filter too); `values` a list."""
    found = _PRINTF_FIELD.findall(fmt)
    widths = sum(int(w or 0) + int(p or 0) for w, p in found)
    return _format_cost(fmt, len(found), widths, values, "*" in fmt)


def str_format_cost(fmt, values) -> int:
    """For `fmt.format(*values)`."""
    fields = widths = 0
    nested = False
    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is not None:
            fields += 1
            widths += sum(int(n) for n in re.findall(r"\d+", spec or ""))
            nested = nested or "{" in (spec or "")
    return _format_cost(fmt, fields, widths, values, nested)


def _operands(right) -> list:
    """The values `fmt % right` formats."""
    if isinstance(right, tuple):
        return list(right)
    return list(right.values()) if isinstance(right, Mapping) else [right]


def _counted(iterable):
    budget = _budget()
    for item in iterable:
        budget.step()
        yield item


def _as_text(value):
    """Stands in front of everything a template writes or joins with `~`."""
    budget = _budget()
    budget.step()
    budget.charge(text_size(value, budget.size))
    return value


def _filter_cost(name, value, args, kwargs, budget) -> int:
    """What a filter may make, charged before it runs."""
    if name == "format":
        fmt = value if isinstance(value, str) else ""
        return text_size(value, budget.size) + printf_cost(fmt, list(args) + list(kwargs.values()))
    if name == "sum":   # of lists or strings: all of them end to end
        return text_size(value, budget.size)
    if name in COPYING_FILTERS:
        w = _weight(args, kwargs)
        return (text_size(value, budget.size, per_level=1 + w) + 1) * (1 + w)
    if name in COUNTING_FILTERS:
        return _counts(list(args) + list(kwargs.values()))
    return 0


def _bounded_filter(name, func):
    value_at = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0

    @wraps(func)
    def bounded(*args, **kwargs):
        budget = _budget()
        budget.step()
        value, rest = (args[value_at], args[value_at + 1:]) if len(args) > value_at else (None, ())
        budget.charge(_filter_cost(name, value, rest, kwargs, budget))
        result = func(*args, **kwargs)
        budget.charge(_shallow_size(result))
        return result
    return bounded


def _bounded_test(func):
    @wraps(func)
    def bounded(*args, **kwargs):
        _budget().step()
        return func(*args, **kwargs)
    return bounded


def _check_power(left, right):
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        if left.bit_length() * right > MAX_INT_BITS:
            raise BudgetExceeded(f"{left} ** {right} is too large a number (more than "
                                 f"{MAX_INT_BITS} bits)")


def _check_product(budget, left, right):
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise BudgetExceeded(f"a product of more than {MAX_INT_BITS} bits")
        return
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
            budget.charge(len(seq) * max(times, 0))


class BoundedEnvironment(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment whose templates render under a Budget. Compile
    templates with compile_bounded and render them with render; a template made with
    from_string would miss the loop and output accounting."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options):
        super().__init__(**options)
        # lipsum(n) writes n paragraphs of filler, and no chat template has a use for it.
        self.globals.pop("lipsum", None)

    def bound_filters_and_tests(self):
        """Wrap every filter and test registered so far; call after adding your own."""
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.filters[_LOOP] = _counted
        self.filters[_TEXT] = _as_text
        self.tests = {name: _bounded_test(f) for name, f in self.tests.items()}

    def compile_bounded(self, source: str) -> jinja2.Template:
        """Parse `source` and route its loops and output through the budget: each loop's
        iterable counts its items, and everything written or joined with `~` is charged
        its text before it is made."""
        tree = self.parse(source)
        for node in list(tree.find_all((nodes.For, nodes.Output, nodes.Concat))):
            if isinstance(node, nodes.For):
                node.iter = _filter_node(node.iter, _LOOP)
            else:
                node.nodes = [_filter_node(child, _TEXT) for child in node.nodes]
        tree.set_environment(self)
        return self.from_string(tree)

    def render(self, template: jinja2.Template, **variables) -> str:
        budget = Budget(text_size(variables))
        token = _active.set(budget)
        try:
            return "".join(template.generate(**variables))
        finally:
            _active.reset(token)

    # The sandbox's hooks: every call, operator and lookup a template makes passes here.
    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's convention)
        budget = _budget()
        budget.step()
        if isinstance(__obj, LoopContext) and args:   # loop(children) in a recursive for
            args = (_counted(args[0]),) + args[1:]
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            growth = 1 + _weight(args, kwargs) if __obj.__name__ in GROWING_METHODS else 1
            budget.charge((len(owner) + 1) * growth)
        result = super().call(__context, __obj, *args, **kwargs)
        budget.charge(_shallow_size(result))
        return result

    def call_binop(self, context, operator, left, right):
        budget = _budget()
        budget.step()
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_product(budget, left, right)
        elif operator == "%" and isinstance(left, str):
            budget.charge(printf_cost(left, _operands(right)))
        result = super().call_binop(context, operator, left, right)
        budget.charge(_shallow_size(result))
        return result

    def wrap_str_format(self, value):
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        @wraps(wrapped)
        def bounded(*args, **kwargs):
            if value.__name__ == "format_map":
                values = list(args[0].values()) if args and isinstance(args[0], Mapping) else []
            else:
                values = list(args) + list(kwargs.values())
            _budget().charge(str_format_cost(fmt, values))
            return wrapped(*args, **kwargs)
        return bounded

    def getattr(self, obj, attribute):
        _budget().step()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        budget = _budget()
        budget.step()
        result = super().getitem(obj, argument)
        if isinstance(argument, slice):
            budget.charge(_shallow_size(result))
        return result


def _filter_node(node, name):
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)

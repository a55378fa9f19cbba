"""One validator for the options of every public function, worded as scikit-learn words its own:

    The 'top' parameter of explain_residual must be an int in the range [1, 500]. Got 0 instead.

Messages name the Python parameter and function; the CLI maps them to its flags and commands when it prints them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Iterable

from embedlab.errors import InvalidParameterError


@dataclass(frozen=True)
class Interval:
    """Numbers of `kind` (int or float) in [low, high] (None: unbounded); `closed` says which ends are included."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"  # both | left | right | neither

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, Integral if self.kind is int else Real):
            return False
        if isinstance(value, float) and math.isnan(value):
            return False
        lo_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        hi_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        return lo_ok and hi_ok

    def __str__(self) -> str:
        left = "[" if self.low is not None and self.closed in ("both", "left") else "("
        right = "]" if self.high is not None and self.closed in ("both", "right") else ")"
        low = "-inf" if self.low is None else _num(self.low)
        high = "inf" if self.high is None else _num(self.high)
        return f"{'an int' if self.kind is int else 'a float'} in the range {left}{low}, {high}{right}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values (strings, usually); `or_text` describes a free-form alternative."""

    values: tuple
    or_text: str = ""

    def accepts(self, value: Any) -> bool:
        return value in self.values

    def __str__(self) -> str:
        kind = "a str" if all(isinstance(v, str) for v in self.values) else "a value"
        among = "{" + ", ".join(repr(v) for v in self.values) + "}"
        return f"{kind} among {among}" + (f" or {self.or_text}" if self.or_text else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def check_param(
    name: str, value: Any, constraint: Interval | Options | Iterable, owner: str, allow_none: bool = False
) -> Any:
    """Return `value` when it satisfies `constraint`, else raise InvalidParameterError naming `name` and `owner`.

    A plain iterable of values is read as `Options(values)`.
    """
    if not isinstance(constraint, (Interval, Options)):
        constraint = Options(tuple(constraint))
    if (value is None and allow_none) or constraint.accepts(value):
        return value
    what = str(constraint) + (" or None" if allow_none else "")
    raise InvalidParameterError(
        f"The {name!r} parameter of {owner} must be {what}. Got {value!r} instead.", param=name, owner=owner
    )

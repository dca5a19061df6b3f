"""A sourced number: the leaf of every hardware entry.

Each number in ``hardware_db/`` is stored as::

    bandwidth_bytes_per_s:
      value: 3.35e12                 # SI (B/s)
      as_published: "3.35TB/s"       # the text exactly as the source prints it
      source: nv-h100-datasheet      # id in hardware_db/sources/*.yaml
      kind: vendor-spec              # vendor-spec | measured | derived | estimate

and the loader checks that the published text, read by :mod:`capsim.units`
(and passed through ``formula`` when the value is derived), gives ``value``.
That single rule makes the classic unit bugs impossible: a "tera" of 2**40,
a GiB/s bandwidth stored as GB/s, 3072e9 for 3.35 TB/s. Two more rules close
the rest: a 2:4-sparse peak ("1,979 TFLOPS*") must be stored halved, as a
derived value; a bidirectional link figure must be derived to per-direction.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator

from capsim.checks import MAX_SI, MIN_RATE
from capsim.units import UnitError, parse_quantity

Kind = Literal["vendor-spec", "measured", "derived", "estimate"]

RELATIVE_TOLERANCE = 1e-6  # value vs. parsed as_published; covers float rounding only

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
}


def evaluate_formula(formula: str, x: float) -> float:
    """Evaluate an arithmetic formula in ``x`` (the parsed as_published value in SI).

    Only numbers, ``x`` and + - * / ** ( ) are allowed; e.g. ``x / 2`` for a
    sparse peak, ``x * 16 * 128 / 130 / 8`` for a PCIe x16 link from GT/s.
    """

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id == "x":
            return x
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"formula {formula!r}: only numbers, x and + - * / ** ( ) are allowed")

    try:
        tree = ast.parse(formula.split("#", 1)[0].strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as err:
        raise ValueError(f"formula {formula!r} is not an arithmetic expression in x") from err
    try:
        out = ev(tree)
    except ZeroDivisionError:
        raise ValueError(f"formula {formula!r} divides by zero") from None
    except (OverflowError, RecursionError):
        raise ValueError(f"formula {formula!r} overflows (the result is beyond a float)") from None
    if isinstance(out, complex) or not math.isfinite(out):
        raise ValueError(f"formula {formula!r} gives {out!r}, not a finite real number")
    return out


class Quantity(BaseModel):
    """One number with its unit-bearing published text, source and provenance kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float
    as_published: str
    source: str
    kind: Kind
    formula: str | None = None  # derived: arithmetic in x = parsed as_published (SI)
    reason: str | None = None  # estimate: why this number, and why no published one
    command: str | None = None  # measured: the command that measured it
    date: str | None = None  # measured: when
    note: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _value_from_text(cls, data):
        """``value`` may be left out: it is then what ``as_published`` (through ``formula``) says."""
        if isinstance(data, dict) and data.get("value") is None and isinstance(data.get("as_published"), str):
            try:
                x = parse_quantity(data["as_published"]).value
            except UnitError as err:
                raise ValueError(f"as_published: {err}") from None
            data = {**data, "value": evaluate_formula(data["formula"], x) if data.get("formula") else x}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Quantity:
        if not math.isfinite(self.value):
            raise ValueError("value must be a finite number")
        if self.value < 0:
            raise ValueError(f"value must be >= 0, got {self.value!r}")
        if self.value > MAX_SI:
            raise ValueError(f"value {self.value:g} is beyond any real part (at most {MAX_SI:g} in SI units)")
        if not self.source.strip():
            raise ValueError("source must name an entry of hardware_db/sources")
        if self.kind == "derived" and not self.formula:
            raise ValueError("kind 'derived' needs a formula in x (the parsed as_published value)")
        if self.kind != "derived" and self.formula:
            raise ValueError("a formula is allowed only with kind 'derived'")
        if self.kind == "estimate" and not self.reason:
            raise ValueError("kind 'estimate' needs a reason")
        if self.kind == "measured" and not self.command:
            raise ValueError("kind 'measured' needs the command that measured it")
        parsed = self.parsed()
        if "sparse" in parsed.qualifiers and (self.kind != "derived" or not _halves(self.formula)):
            raise ValueError(
                f"as_published {self.as_published!r} is a 2:4-sparse peak: store the dense value "
                "(kind: derived, formula: x / 2)"
            )
        if "bidirectional" in parsed.qualifiers and self.kind != "derived":
            raise ValueError(
                f"as_published {self.as_published!r} counts both directions: store one direction "
                "(kind: derived, formula: x / 2)"
            )
        expected = self.expected_value()
        if not math.isclose(expected, self.value, rel_tol=RELATIVE_TOLERANCE, abs_tol=0.0):
            how = f" through formula {self.formula!r}" if self.formula else ""
            raise ValueError(
                f"as_published {self.as_published!r}{how} gives {expected:.6g} but value is {self.value:.6g}"
            )
        return self

    def parsed(self):
        try:
            return parse_quantity(self.as_published)
        except UnitError as err:
            raise ValueError(f"as_published: {err}") from None

    def expected_value(self) -> float:
        """The SI value that ``as_published`` (and the formula, when derived) implies."""
        x = self.parsed().value
        return evaluate_formula(self.formula, x) if self.formula else x

    def dimension(self) -> str | None:
        """Dimension of the stored value; None when a formula may change it (derived)."""
        return None if self.formula else self.parsed().dimension


def _halves(formula: str | None) -> bool:
    return formula is not None and math.isclose(evaluate_formula(formula, 1.0), 0.5)


RATES = ("B/s", "FLOP/s", "Hz", "T/s", "IO/s")  # dimensions whose value divides work: zero would mean "never"


def _dimension_check(dimension: str):
    def check(q: Quantity) -> Quantity:
        dim = q.dimension()
        if dim is not None and dim != dimension:
            raise ValueError(
                f"as_published {q.as_published!r} is in {dim!r}, this field needs {dimension!r}"
            )
        if dimension in RATES and q.value < MIN_RATE:
            raise ValueError(f"a rate of {q.value:g} {dimension} does no work; expected at least {MIN_RATE:g}")
        return q

    return AfterValidator(check)


# Typed quantity fields: the field's unit is fixed by its type (and its name's suffix).
Bytes = Annotated[Quantity, _dimension_check("B")]
BytesPerS = Annotated[Quantity, _dimension_check("B/s")]
FlopPerS = Annotated[Quantity, _dimension_check("FLOP/s")]
Watts = Annotated[Quantity, _dimension_check("W")]
Usd = Annotated[Quantity, _dimension_check("USD")]
UsdPerH = Annotated[Quantity, _dimension_check("USD/h")]
Seconds = Annotated[Quantity, _dimension_check("s")]
SecondsPerByte = Annotated[Quantity, _dimension_check("s/B")]
Hertz = Annotated[Quantity, _dimension_check("Hz")]
TransfersPerS = Annotated[Quantity, _dimension_check("T/s")]
IoPerS = Annotated[Quantity, _dimension_check("IO/s")]
Count = Annotated[Quantity, _dimension_check("1")]

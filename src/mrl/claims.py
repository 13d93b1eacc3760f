"""The paper's qualitative claims, judged against the spread over seeds.

A claim compares two rows of a table (method ``a`` against method ``b``) at some sizes:

* ``">="`` (a matches or beats b): at a size it *holds* when ``mean_a >= mean_b``, *does not
  hold* when ``mean_a < mean_b - 2 se``, and is *undecided* in between;
* ``">"`` (a beats b): *holds* when ``mean_a > mean_b + 2 se``, *does not hold* when
  ``mean_a < mean_b - 2 se``, *undecided* otherwise;

where ``se = sqrt(std_a**2 / n_a + std_b**2 / n_b)`` is the standard error of the
difference of the two means (sample std, n - 1). With fewer than two seeds in a cell there is
no spread and the size is undecided. A claim holds when it holds at every size it names,
does not hold when it fails at any, and is undecided otherwise; sizes without both cells are
listed as not measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mrl.results import Cell


@dataclass(frozen=True)
class Claim:
    """``a relation b`` at ``sizes``: ``"all"``, ``"smallest3"`` (the three smallest) or a
    tuple of sizes."""

    text: str
    a: str
    b: str
    relation: str = ">="
    sizes: str | tuple[int, ...] = "all"

    def dims(self, dims: Sequence[int]) -> list[int]:
        dims = sorted(dims)
        if isinstance(self.sizes, tuple):
            return [m for m in dims if m in self.sizes]
        return dims[:3] if self.sizes == "smallest3" else dims


TABLE1_CLAIMS = (
    Claim("MRL is as accurate as an independently trained FF model at every size", "MRL", "FF"),
    Claim("MRL-E is as accurate as FF at every size", "MRL-E", "FF"),
    Claim("MRL beats Rand. LP at the smallest sizes", "MRL", "Rand. LP", ">", "smallest3"),
    Claim("MRL beats SVD at the smallest sizes", "MRL", "SVD", ">", "smallest3"),
    Claim("MRL beats Slim. Net at the smallest sizes", "MRL", "Slim. Net", ">", "smallest3"),
)
TABLE2_CLAIMS = (
    Claim("MRL's 1-NN accuracy matches or beats FF's at every size", "MRL", "FF"),
    Claim(
        "MRL beats Rand. FS (FF-max truncated) at the smallest sizes",
        "MRL",
        "Rand. FS",
        ">",
        "smallest3",
    ),
    Claim("MRL beats FF+SVD at the smallest sizes", "MRL", "FF+SVD", ">", "smallest3"),
)


def verdict_at(a: Cell, b: Cell, relation: str) -> tuple[str, float, float]:
    """``(verdict, mean_a - mean_b, se)`` at one size (see the module docstring)."""
    diff = a.mean - b.mean
    if a.std is None or b.std is None:
        return "undecided", diff, math.nan
    se = math.sqrt(a.std**2 / a.n + b.std**2 / b.n)
    if diff < -2 * se:
        return "does not hold", diff, se
    if relation == ">=":
        return ("holds" if diff >= 0 else "undecided"), diff, se
    return ("holds" if diff > 2 * se else "undecided"), diff, se


def judge(claim: Claim, cells: dict[tuple[str, int], Cell], dims: Sequence[int]) -> dict:
    """``{"verdict", "per_size": {m: (verdict, diff, se)}, "missing": [m, ...]}``."""
    per, missing = {}, []
    for m in claim.dims(dims):
        a, b = cells.get((claim.a, m)), cells.get((claim.b, m))
        if a is None or b is None or a.mean is None or b.mean is None:
            missing.append(m)
            continue
        per[m] = verdict_at(a, b, claim.relation)
    verdicts = {v for v, _, _ in per.values()}
    if not per:
        verdict = "not measured"
    elif "does not hold" in verdicts:
        verdict = "does not hold"
    elif verdicts == {"holds"}:
        verdict = "holds"
    else:
        verdict = "undecided"
    return {"verdict": verdict, "per_size": per, "missing": missing}


def judge_claims(
    claims: Sequence[Claim], cells: dict[tuple[str, int], Cell], dims: Sequence[int]
) -> str:
    """A Markdown section: one line per claim with its verdict and the per-size differences
    ``a - b`` (points) with their standard errors."""
    lines = [
        "## The paper's claims at this budget",
        "",
        "| claim | verdict | a - b per size (points, ± 1 se) |",
        "|---|---|---|",
    ]
    for claim in claims:
        j = judge(claim, cells, dims)
        parts = []
        for m, (v, diff, se) in j["per_size"].items():
            spread = "" if math.isnan(se) else f" ± {se:.2f}"
            flag = {"holds": "", "undecided": " ?", "does not hold": " ✗"}[v]
            parts.append(f"{m}: {diff:+.2f}{spread}{flag}")
        if j["missing"]:
            parts.append("not measured at " + ", ".join(map(str, j["missing"])))
        lines.append(f"| {claim.text} | **{j['verdict']}** | {'; '.join(parts)} |")
    lines += [
        "",
        "Rule: 'matches or beats' holds at a size when mean(a) >= mean(b), fails when mean(a) <"
        " mean(b) - 2 se; 'beats' holds when mean(a) > mean(b) + 2 se, fails when mean(a) <"
        " mean(b) - 2 se; otherwise undecided (?); ✗ marks a failing size; se = standard error"
        " of the difference of the means over the seeds (undecided with one seed).",
    ]
    return "\n".join(lines) + "\n"

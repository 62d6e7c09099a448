"""Verdicts on the papers' ordering claims, from a test over seeds; a paper number reproduced or not.

A claim "A > B" holds only when both sides have at least `min_seeds` finished results and a one-sided
Welch t-test (unequal variances; scipy.stats.ttest_ind) rejects "A <= B" at level `alpha`; it fails
when the reverse test rejects "A >= B"; otherwise it is undecided, and says why. A chain
A > B > C, or "A over each of B, C", is a family of pairs: the p-values of each direction are
Holm-corrected over the family (step-down; the family-wise error stays below alpha), and the claim
holds when every pair holds, fails when any pair fails. Where our cells are not at the paper's
setting (dataset, arch, epochs), a verdict is said "at our setting", never as the bare word.

A paper number is reproduced, at its own setting only, when it lies within `tolerance` points of
our mean, or inside our two-sided 95% t-interval when n >= 3.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats as scipy_stats

HOLDS, FAILS, UNDECIDED = "holds", "fails", "undecided"
NOT_CONFIGURED, NO_TASK, NOT_RUN, NO_VALUE = "not configured", "no cmim task", "not run", "no value"
OTHER_SETTING = "other setting"


@dataclass(frozen=True)
class Rule:
    """The report block's keys that decide verdicts and the reproduced mark (schema: report)."""

    min_seeds: int = 3
    alpha: float = 0.05
    tolerance: float = 0.5

    @classmethod
    def of(cls, report: dict) -> Rule:
        return cls(**{k: report[k] for k in ("min_seeds", "alpha", "tolerance") if k in report})

    def text(self) -> str:
        """The rule, as every table's caption states it."""
        return (f"A claim 'A > B' holds when both sides have at least {self.min_seeds} finished seeds and a one-sided "
                f"Welch t-test gives p < {self.alpha} (scipy.stats.ttest_ind, unequal variances); it fails when "
                f"'B > A' passes the same test; otherwise it is undecided, and the table says why (n of each "
                f"side, the difference, p). A chain A > B > C or 'A over each of B, C' is a family of pairs "
                f"whose p-values are Holm-corrected; it holds when every pair holds and fails when any pair "
                f"fails. Where our runs are not at the paper's setting (pretraining data, arch, epochs), a "
                f"verdict reads 'holds at our setting' / 'fails at our setting'. A paper number is "
                f"'reproduced' at its own setting when it is within {self.tolerance} points of our mean or "
                f"inside our 95% t-interval (n >= 3), else 'off by' the difference.")


def summary(values: list[float]) -> dict:
    """mean, sample std (0 for one value) and n."""
    n = len(values)
    if not n:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if n > 1 else 0.0, "n": n}


def welch_p(a: list[float], b: list[float], alternative: str) -> float:
    """One-sided Welch t-test p-value of mean(a) > mean(b) ("greater") or < ("less"). Two constant
    samples (zero variance on both sides) have no t: p is 0 when the means differ in the tested
    direction, else 1."""
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        diff = statistics.fmean(a) - statistics.fmean(b)
        return 0.0 if (diff > 0 if alternative == "greater" else diff < 0) else 1.0
    p = float(scipy_stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)
    return 1.0 if math.isnan(p) else p


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1), in the input's order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out, running = [1.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        out[i] = running
    return out


def _blocked(a: dict, b: dict) -> str | None:
    """A status that keeps the pair from any test (a side not configured, not run, without the metric)."""
    for status in (NOT_CONFIGURED, NO_TASK, NOT_RUN, NO_VALUE):
        if status in (a["status"], b["status"]):
            return NOT_CONFIGURED if status == NO_TASK else status
    return None


def _n_text(name: str, cell: dict) -> str:
    of = f" of {cell['n_configured']}" if cell["n"] < cell.get("n_configured", cell["n"]) else ""
    return f"{name}: n={cell['n']}{of} finished"


def pair_tests(pairs: list[tuple[str, str, dict, dict]], rule: Rule) -> list[dict]:
    """Each (name A, name B, cell A, cell B): its n, difference, raw and Holm-corrected p of both
    directions, and its verdict with the reason. Cells carry `values` (run -> number), `n`,
    `n_configured` and `status`."""
    out = []
    for hi, lo, a, b in pairs:
        row = {"a": hi, "b": lo, "n_a": a.get("n", 0), "n_b": b.get("n", 0), "difference": None,
               "p": None, "p_reverse": None, "p_holm": None, "p_reverse_holm": None}
        blocked = _blocked(a, b)
        if blocked:
            row.update(verdict=blocked, reason=blocked)
        else:
            va, vb = list(a["values"].values()), list(b["values"].values())
            row["difference"] = statistics.fmean(va) - statistics.fmean(vb)
            if len(va) < rule.min_seeds or len(vb) < rule.min_seeds:
                row.update(verdict=UNDECIDED, reason=f"needs n >= {rule.min_seeds} per side ({_n_text(hi, a)}, "
                                                     f"{_n_text(lo, b)}); difference {row['difference']:+.2f}")
            else:
                row.update(p=welch_p(va, vb, "greater"), p_reverse=welch_p(va, vb, "less"), verdict=None)
        out.append(row)
    tested = [r for r in out if r["p"] is not None]
    for key, adjusted in (("p", holm([r["p"] for r in tested])), ("p_reverse", holm([r["p_reverse"] for r in tested]))):
        for r, p in zip(tested, adjusted):
            r[f"{key}_holm"] = p
    for r in tested:
        corrected = " (Holm over the claim's pairs)" if len(tested) > 1 else ""
        if r["p_holm"] < rule.alpha:
            r.update(verdict=HOLDS, reason=f"difference {r['difference']:+.2f}, p = {r['p_holm']:.3g}{corrected}")
        elif r["p_reverse_holm"] < rule.alpha:
            r.update(verdict=FAILS, reason=f"difference {r['difference']:+.2f}, reverse p = "
                                           f"{r['p_reverse_holm']:.3g}{corrected}")
        else:
            r.update(verdict=UNDECIDED, reason=f"difference {r['difference']:+.2f}, p = {r['p_holm']:.3g} "
                                               f">= {rule.alpha}{corrected}")
    return out


def combine(verdicts: list[str]) -> str:
    """A claim over several pairs: any failing pair fails it; all must hold for it to hold."""
    for v in (FAILS, NOT_CONFIGURED, NOT_RUN, NO_VALUE, UNDECIDED):
        if v in verdicts:
            return v
    return HOLDS


def at_setting(verdict: str, paper_setting: bool) -> str:
    """'holds' / 'fails' only at the paper's own setting; elsewhere 'holds at our setting'."""
    if verdict in (HOLDS, FAILS) and not paper_setting:
        return f"{verdict} at our setting"
    return verdict


def interval95(values: list[float]) -> tuple[float, float] | None:
    """Two-sided 95% t-interval of the mean (None below 3 values)."""
    n = len(values)
    if n < 3:
        return None
    m, s = statistics.fmean(values), statistics.stdev(values)
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * s / math.sqrt(n)
    return m - half, m + half


def versus_paper(values: list[float], paper: float | None, same_setting: bool, rule: Rule) -> tuple[str, float | None]:
    """(mark, difference ours - paper): 'reproduced', 'off by +1.2', 'other setting', or '-'."""
    if not values or paper is None:
        return "-", None
    if not same_setting:
        return OTHER_SETTING, None
    diff = statistics.fmean(values) - paper
    ci = interval95(values)
    if abs(diff) <= rule.tolerance or (ci is not None and ci[0] <= paper <= ci[1]):
        return "reproduced", diff
    return f"off by {diff:+.1f}", diff

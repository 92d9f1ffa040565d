"""Estimates and comparisons as terminal tables, as JSON-ready data, and as a self-contained HTML report with plots."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from offline_eval.base import Estimate
from offline_eval.comparison import Comparison


def to_dict(comparison: Comparison) -> dict[str, Any]:
    """Everything in the comparison as JSON-serializable values."""
    return {
        "decisions": comparison.decisions,
        "primary_estimator": comparison.primary,
        "logging": asdict(comparison.logging) | {"emerging": asdict(comparison.logging_emerging)},
        "candidates": [
            {
                "rank": r.rank,
                "name": r.name,
                "policy": r.policy,
                "params": r.params,
                "version": r.version,
                "beats_logging": r.beats_logging,
                "estimates": [asdict(e) for e in r.evaluation.estimates],
                "diagnostics": asdict(r.evaluation.diagnostics),
                "emerging": asdict(r.emerging),
            }
            for r in comparison.candidates
        ],
    }


def format_table(comparison: Comparison) -> str:
    """Ranked candidates, their estimates and gate, then warnings, as plain text."""
    level = comparison.logging.level
    lines = [
        f"{comparison.decisions} decisions; logging policy's mean slate reward {comparison.logging.value:.4f} "
        f"[{comparison.logging.lower:.4f}, {comparison.logging.upper:.4f}]; ranked by {comparison.primary}",
        "",
        f"{'rank':<5}{'candidate':<22}{'estimator':<16}{'estimate':>10}   {f'{level:.0%} interval':<22}"
        f"{'beats logging':<14}{'emerging share':>15}{'gini':>7}",
    ]
    for r in comparison.candidates:
        for i, e in enumerate(r.evaluation.estimates):
            head = f"{r.rank:<5}{r.name[:21]:<22}" if i == 0 else " " * 27
            gate = ("yes" if r.beats_logging else "no") if e.estimator == comparison.primary else ""
            tail = f"{r.emerging.exposure_share:>15.3f}{r.emerging.exposure_gini:>7.3f}" if i == 0 else ""
            flag = "  !" if e.flags else ""
            lines.append(
                f"{head}{e.estimator:<16}{e.value:>10.4f}   [{e.lower:.4f}, {e.upper:.4f}]{'':<4}{gate:<14}{tail}{flag}"
            )
    lines.append(
        f"{'':<5}{'(logging policy)':<22}{'logged':<16}{comparison.logging.value:>10.4f}   "
        f"[{comparison.logging.lower:.4f}, {comparison.logging.upper:.4f}]{'':<18}"
        f"{comparison.logging_emerging.exposure_share:>15.3f}{comparison.logging_emerging.exposure_gini:>7.3f}"
    )
    for r in comparison.candidates:
        for e in r.evaluation.estimates:
            for f in e.flags:
                lines.append(f"flag: {r.name}: {e.estimator}: {f}")
        for w in r.evaluation.diagnostics.warnings:
            lines.append(f"warning: {r.name}: {w}")
    return "\n".join(lines)


def html_report(comparison: Comparison) -> str:
    """A single HTML page (plots embedded as base64 PNG) with the table, diagnostics and warnings."""
    plots = [_estimates_plot(comparison), _ess_plot(comparison)]
    rows = []
    for r in comparison.candidates:
        for e in r.evaluation.estimates:
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{html.escape(str(v))}</td>"
                    for v in (
                        r.rank,
                        r.name,
                        e.estimator,
                        f"{e.value:.4f}",
                        f"[{e.lower:.4f}, {e.upper:.4f}]",
                        e.interval,
                        ("yes" if r.beats_logging else "no") if e.estimator == comparison.primary else "",
                        "; ".join(e.flags),
                    )
                )
                + "</tr>"
            )
    emerging = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{m.exposure_share:.3f}</td><td>{m.emerging_reward:.4f}</td>"
        f"<td>{m.distinct_creators}</td><td>{m.exposure_gini:.3f}</td></tr>"
        for name, m in [("(logging policy)", comparison.logging_emerging)]
        + [(r.name, r.emerging) for r in comparison.candidates]
    )
    warnings = "".join(
        f"<li>{html.escape(r.name)}: {html.escape(w)}</li>"
        for r in comparison.candidates
        for w in r.evaluation.diagnostics.warnings
    )
    images = "".join(f'<img alt="plot" src="data:image/png;base64,{p}">' for p in plots)
    logging = comparison.logging
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Scout offline evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:right}}img{{max-width:48%;margin:1%}}</style></head><body>
<h1>Offline evaluation</h1>
<p>{comparison.decisions} logged decisions. Logging policy's mean slate reward {logging.value:.4f}
[{logging.lower:.4f}, {logging.upper:.4f}]. Candidates ranked by <b>{html.escape(comparison.primary)}</b>; a
candidate beats the logging policy when that estimator's lower bound is above the logging policy's mean and
nothing warns.</p>
{images}
<h2>Estimates</h2>
<table><tr><th>rank</th><th>candidate</th><th>estimator</th><th>estimate</th><th>interval</th><th>method</th>
<th>beats logging</th><th>flags</th></tr>{"".join(rows)}</table>
<h2>Emerging creators (counterfactual)</h2>
<table><tr><th>policy</th><th>emerging exposure share</th><th>reward on emerging items</th>
<th>distinct creators</th><th>exposure Gini</th></tr>{emerging}</table>
<h2>Warnings</h2><ul>{warnings or "<li>none</li>"}</ul>
</body></html>
"""


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _estimates_plot(comparison: Comparison) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * len(comparison.candidates)))
    names = [r.name for r in comparison.candidates]
    values = [r.primary.value for r in comparison.candidates]
    low = [r.primary.value - r.primary.lower for r in comparison.candidates]
    high = [r.primary.upper - r.primary.value for r in comparison.candidates]
    ax.errorbar(values, range(len(names)), xerr=[low, high], fmt="o", capsize=4)
    ax.axvline(comparison.logging.value, color="grey", linestyle="--", label="logging policy")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"expected slate reward ({comparison.primary})")
    ax.legend(loc="best")
    out = _png(fig)
    plt.close(fig)
    return out


def _ess_plot(comparison: Comparison) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for r in comparison.candidates:
        d = r.evaluation.diagnostics
        share = [e / s if s else 0.0 for e, s in zip(d.ess_per_slot, d.served_per_slot, strict=True)]
        ax.plot(range(len(share)), share, marker="o", label=r.name)
    ax.axhline(0.1, color="red", linestyle=":", label="warning threshold")
    ax.set_xlabel("slot")
    ax.set_ylabel("effective sample size / decisions")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="best", fontsize="small")
    out = _png(fig)
    plt.close(fig)
    return out


def format_estimates(estimates: Sequence[Estimate], truth: float | None = None, level: float = 0.95) -> str:
    """A small text table of estimates (and the true value, when known); ``!`` marks a flagged estimate."""
    w = max([12, *(len(e.estimator) + 2 for e in estimates)])
    values = [v for e in estimates for v in (e.value, e.lower, e.upper)] + ([truth] if truth is not None else [])
    # four decimals, as scout evaluate prints, unless a value needs more digits to show (click rates of 0.002)
    f = ".4f" if all(abs(v) >= 0.01 or v == 0 or not math.isfinite(v) for v in values) else ".4g"
    lines = [f"{'estimator':<{w}}{'estimate':>10}   {f'{level * 100:g}% interval':<22}"]
    for e in estimates:
        flag = "  !" if e.flags else ""
        lines.append(f"{e.estimator:<{w}}{e.value:>10{f}}   [{e.lower:{f}}, {e.upper:{f}}]{flag}")
    if truth is not None:
        lines.append(f"{'true value':<{w}}{truth:>10{f}}   (known to the synthetic world)")
    return "\n".join(lines)


def flag_lines(estimates: Sequence[Estimate]) -> list[str]:
    """Why the estimates marked ``!`` are flagged: one line per reason, naming the estimators it applies to."""
    names: dict[str, list[str]] = {}
    for e in estimates:
        for flag in e.flags:
            names.setdefault(flag, []).append(e.estimator)
    return [f"! {', '.join(estimators)}: {flag}" for flag, estimators in names.items()]

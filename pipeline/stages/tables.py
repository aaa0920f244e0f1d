"""The evaluation's outputs: Markdown, CSV and JSON tables and a heat map of accuracies (in %)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from pipeline.config import ExperimentConfig
from pipeline.stages.pool import is_slow, test_store_limits


def column_names(cfg: ExperimentConfig) -> list[str]:
    """The table's columns: benign, the configured attacks, then the two means and the worst case."""
    from mid_core.evaluation import SUMMARY_COLUMNS

    return ["benign", *cfg.evaluation.attacks, *SUMMARY_COLUMNS]


def write_tables(cfg: ExperimentConfig, rows: list[dict[str, Any]], out_dir: Path, n_test: int) -> dict[str, Path]:
    """Markdown + CSV + JSON tables and a heat-map figure of accuracies (in %)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = column_names(cfg)
    base, slow_n = test_store_limits(cfg, n_test)
    header = [c + (f" (first {slow_n})" if is_slow(c) and slow_n < base else "") for c in cols]
    md = [f"# {cfg.name}: robust accuracy (%) on {cfg.data.dataset} test, first {base} images, "
          f"eps={cfg.evaluation.eps} (L-inf), backbone {cfg.model.backbone}, pool source {cfg.pool.source}", "",
          "| protocol | model | " + " | ".join(header) + " |", "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        md.append(f"| {r['protocol']} | {r['model']} | " + " | ".join(f"{100 * r[c]:.2f}" for c in cols) + " |")
    verdicts = [r for r in rows if r.get("verdict")]
    union = _has_other_norms(rows)  # else the union equals the L-inf worst case and is not shown
    if verdicts:
        v0 = verdicts[0]["verdict"]
        md += ["", f"White-box verdict on {v0['images']} images (accuracy %): AutoAttack, PGD-{v0['pgd_steps']} "
               f"(step {v0['pgd_step_size']}) with {v0['restarts']} random restarts, and the per-sample worst case over "
               "every L-inf attack of the whitebox row"
               + (" (union: and every L2 / L1 attack of it too)" if union else "")
               + (f", then Square ({v0['square_queries']} queries, {v0['square_restarts']} restart(s)) on what survives it"
                  if "square_queries" in v0 else ""),
               "", "| model | clean | AutoAttack | PGD restarts | per-sample worst case |"
               + (" worst case + Square |" if "square_queries" in v0 else "") + (" union |" if union else ""),
               "|---|---|---|---|---|" + ("---|" if "square_queries" in v0 else "") + ("---|" if union else "")]
        for r in verdicts:
            v = r["verdict"]
            aa = f"{100 * v['autoattack']:.2f}" if v["autoattack"] is not None else "n/a"
            with_square = v.get("worst_case_with_square")
            square = (f" {100 * with_square:.2f} |" if with_square is not None else " n/a |") if "square_queries" in v0 else ""
            md.append(f"| {r['model']} | {100 * v['clean']:.2f} | {aa} | {100 * v['pgd_restarts']:.2f} | "
                      f"{100 * v['per_sample_worst_case']:.2f} |{square}"
                      + (f" {_percent(v.get('union'))} |" if union else ""))
    if union:
        md += _threat_model_lines(cfg, rows)
    warn_rows = [r for r in rows if r.get("sanity_warnings")]
    if warn_rows:
        md += ["", "Sanity-check warnings:"] + [f"- {r['protocol']}/{r['model']}: {w}" for r in warn_rows for w in r["sanity_warnings"]]
    files = {"md": out_dir / "table.md", "csv": out_dir / "table.csv", "json": out_dir / "results.json", "png": out_dir / "heatmap.png"}
    files["md"].write_text("\n".join(md) + "\n")
    with files["csv"].open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["protocol", "model", *header])
        for r in rows:
            w.writerow([r["protocol"], r["model"], *(f"{100 * r[c]:.2f}" for c in cols)])
    files["json"].write_text(json.dumps({"config": cfg.to_dict(), "rows": rows, "test_images": base,
                                         "slow_attack_images": slow_n}, indent=2, default=str))
    _heatmap(rows, cols, files["png"], title=f"{cfg.name} ({cfg.data.dataset}, eps={cfg.evaluation.eps})")
    return files


def _percent(value: float | None) -> str:
    """An accuracy in [0, 1] as a percentage with two decimals, or ``n/a``."""
    return "n/a" if value is None else f"{100 * value:.2f}"


def _has_other_norms(rows: list[dict[str, Any]]) -> bool:
    """Whether a row has budgeted columns in a norm other than L-inf (a per-sample L2 or L1 worst case)."""
    return any(r.get("worst_l2") is not None or r.get("worst_l1") is not None for r in rows)


# Columns shown next to the per-norm worst cases, when the row has them: L-inf AA, L2 AA, L1 APGD.
_THREAT_MODEL_SHOWN = ("AA_N", "AAL2_N", "APGDL1_N")


def _threat_model_lines(cfg: ExperimentConfig, rows: list[dict[str, Any]]) -> list[str]:
    """The Markdown section of the white-box rows' threat models: clean, L-inf / L2 AutoAttack and L1 APGD where
    configured, the per-sample worst case of each norm and their union; empty when no row has a union."""
    from mid_core.attacks import DEFAULT_EPS
    from mid_core.evaluation import THREAT_MODEL_KEYS

    with_union = [r for r in rows if r.get("union") is not None]
    if not with_union:
        return []
    ev = cfg.evaluation
    shown = [c for c in _THREAT_MODEL_SHOWN if c in ev.attacks]
    r0 = with_union[0]
    over = "; ".join(f"{k}: {', '.join(r0[f'{k}_over'])}" for k in THREAT_MODEL_KEYS[:-1] if r0.get(k) is not None)
    l2 = ev.eps_l2 if ev.eps_l2 is not None else DEFAULT_EPS["l2"]
    l1 = ev.eps_l1 if ev.eps_l1 is not None else DEFAULT_EPS["l1"]
    lines = ["", f"White-box threat models (accuracy %; budgets L-inf {ev.eps}, L2 {l2}, L1 {l1}): per-sample worst "
                 f"case of each norm ({over}) and their union (robust only if every budgeted column of the row fails "
                 "on the image)", "",
             "| model | clean | " + " | ".join([*shown, *THREAT_MODEL_KEYS]) + " |",
             "|" + "---|" * (2 + len(shown) + len(THREAT_MODEL_KEYS))]
    for r in with_union:
        cells = [_percent(r.get(c)) for c in (*shown, *THREAT_MODEL_KEYS)]
        lines.append(f"| {r['model']} | {100 * r['benign']:.2f} | " + " | ".join(cells) + " |")
    return lines


def _heatmap(rows: list[dict[str, Any]], cols: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([[100 * r[c] for c in cols] for r in rows])
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(cols), 1.2 + 0.45 * len(rows)))
    im = ax.imshow(data, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{r['protocol']} / {r['model']}" for r in rows], fontsize=8)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", fontsize=7, color="white" if data[i, j] < 60 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)



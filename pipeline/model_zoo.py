"""Copy an experiment's evaluated models into the committed zoo (``models/<experiment>/``) with a Markdown summary.

    mid zoo --config configs/<x>.yaml                     # every evaluated model
    mid zoo --config configs/<x>.yaml --models mid at
    mid zoo --config configs/<x>.yaml --results runs/a/evaluation/results.json runs/b/...
    mid zoo --config configs/<x>.yaml --set output_dir=runs/other --dest /tmp/zoo

Each model is a weights-only checkpoint (with its config and training metrics inside) that
``mid_core.load_robust_model(path)`` loads as an images -> logits module. ``models/<experiment>/README.md``
gets, per model, its kind, backbone, seed, file size and SHA-256, and its accuracy per protocol and attack from
the experiment's ``evaluation/results.json`` (so a claim can be re-checked with other attack code, without
retraining).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.config import ExperimentConfig
from pipeline.errors import MissingInputError, UserError
from pipeline.paths import ExperimentPaths

REPO = Path(__file__).resolve().parents[1]
PROTOCOL_ORDER = {"paper": 0, "whitebox": 1, "transfer": 2}  # a model's rows in the README, whatever the files' order


def _cell(value: Any) -> str:
    """An accuracy in percent, or '-' for an attack that row did not run (e.g. a white-box run on a subset)."""
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "-"


def merge_results(paths: list[Path]) -> dict[str, Any]:
    """The rows of several ``results.json`` files of one experiment (e.g. protocols evaluated by separate jobs into
    separate output dirs), in order; a later file's row replaces an earlier one for the same (protocol, model).
    The files must agree on the number of test images and of slow-attack images, or the cells would not compare."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    sizes: set[tuple[int, int]] = set()
    for path in paths:
        if not path.exists():
            raise MissingInputError(f"{path} does not exist: run mid evaluate --config <this config> (with that "
                                    "output_dir) first")
        results = json.loads(path.read_text())
        sizes.add((results["test_images"], results["slow_attack_images"]))
        for row in results["rows"]:
            merged[(row["protocol"], row["model"])] = row
    if len(sizes) > 1:
        raise UserError(f"results files disagree on (test images, slow-attack images): {sorted(sizes)}; "
                         "evaluate every protocol on the same images before merging")
    test_images, slow_images = sizes.pop()
    return {"rows": list(merged.values()), "test_images": test_images, "slow_attack_images": slow_images}


def export(cfg: ExperimentConfig, models: list[str], dest: Path, results_paths: list[Path] | None = None) -> Path:
    """Copy ``models`` of ``cfg``'s run into ``dest`` and write ``dest/README.md``; returns the README path.

    ``results_paths``: evaluation results to document (merged by ``merge_results``); default the run's own
    ``evaluation/results.json``."""
    from mid_core.checkpoint import read_checkpoint

    paths = ExperimentPaths.of(cfg)
    results = merge_results(list(results_paths or [paths.evaluation / "results.json"]))
    rows: list[dict[str, Any]] = results["rows"]
    dest.mkdir(parents=True, exist_ok=True)
    lines = [f"# {cfg.name}: {cfg.data.dataset}, backbone {cfg.model.backbone}, L-inf eps {cfg.evaluation.eps}", "",
             "Load any of them with `mid_core.load_robust_model(path)` (float images in [0, 1], shape (N, 1, 28, 28) -> "
             "logits). Accuracies (%) from `evaluation/results.json` of the run: "
             f"{results['test_images']} test images, CW and JSMA on the first {results['slow_attack_images']}.", ""]
    from mid_core.evaluation import SUMMARY_COLUMNS

    attacks = ["benign", *cfg.evaluation.attacks, *SUMMARY_COLUMNS]
    for model in models:
        src = paths.model(model)
        if not src.exists():
            raise MissingInputError(f"{src} does not exist; train {model!r} first")
        payload = read_checkpoint(src)
        out = dest / f"{model}.pt"
        shutil.copyfile(src, out)
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        seed = payload.get("metrics", {}).get("seed", payload.get("config", {}).get("seed"))
        lines += [f"## `{model}.pt`", "",
                  f"kind `{payload['kind']}`, backbone `{payload['backbone']}`, seed {seed}, {out.stat().st_size / 1024:.0f} KiB, "
                  f"sha256 `{digest[:16]}…`; trained by `configs/{cfg.name}.yaml`"
                  + (f" (variant `{model}`: `configs/{cfg.name}/{model}.yaml`)" if (REPO / "configs" / cfg.name / f"{model}.yaml").exists() else ""),
                  "", "| protocol | " + " | ".join(attacks) + " |", "|---|" + "---|" * len(attacks)]
        for r in sorted((r for r in rows if r["model"] == model), key=lambda r: PROTOCOL_ORDER.get(r["protocol"], 3)):
            lines.append(f"| {r['protocol']} | " + " | ".join(_cell(r.get(a)) for a in attacks) + " |")
        lines.append("")
    readme = dest / "README.md"
    readme.write_text("\n".join(lines))
    return readme

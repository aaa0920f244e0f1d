"""Stage 5: the paper's analysis figures (Figs. 7-14), after the evaluation.

Every figure of ``analysis.figures`` is a PNG under ``<output_dir>/analysis/`` with the numbers behind it in a JSON
file of the same name; ``index.json`` lists which figures were made, the models and the source of each attacked
input. All of them are logged as MLflow artifacts (folder ``analysis``) of the evaluation's run, or of a run of
their own when the evaluation was not tracked; without MLflow the files are written all the same.

Inputs: the first ``analysis.images`` test images; the models of ``<output_dir>/models/``: the teacher (E_t, C_t,
D_t), the undefended baseline (``analysis.undefended``), Madry AT (``at``) and the MID variant (``analysis.mid_model``)
where their checkpoints exist; the attacked views of those images, read from the ``paper`` test store where it holds
them (the images the evaluation scored), else computed against the pool's source model with the store's seeds and
8-bit quantisation.

A figure the models or the architecture do not allow (no decoder, no MID model, no spatial feature map for
Grad-CAM, ...) is not drawn: its JSON says why, and so does a log line.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from pipeline.config import ExperimentConfig, analysis_attacks
from pipeline.errors import MissingInputError, StaleInputError
from pipeline.paths import ExperimentPaths
from pipeline.stages.common import pool_source_role, require_model

log = logging.getLogger(__name__)

BENIGN = "benign"
METHODS = ("undefended", "at", "mid")  # the compared models, in plotting order


class NotAvailable(Exception):
    """A figure these models or this architecture cannot give; the message says why."""


@dataclass
class AnalysisInputs:
    """What every figure draws from.

    ``images`` float ``(N, C, H, W)`` in [0, 1] and ``labels`` ``(N,)``: the first test images; ``domains``: benign
    (``images`` itself) then each attack's views of the same images, ``(N, C, H, W)`` each; ``models``: method
    (``undefended`` / ``at`` / ``mid``) -> images -> logits classifier with an ``encoder``, for those that exist;
    ``roles``: method -> checkpoint role; ``teacher``: the frozen teacher (its ``decoder`` may be None)."""

    cfg: ExperimentConfig
    images: torch.Tensor
    labels: torch.Tensor
    domains: dict[str, torch.Tensor]
    teacher: Any
    models: dict[str, nn.Module]
    roles: dict[str, str]
    attack_sources: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def attacks(self) -> list[str]:
        return [d for d in self.domains if d != BENIGN]

    @property
    def batch_size(self) -> int:
        return self.cfg.evaluation.batch_size

    def grid(self) -> list[int]:
        """Indices of the images shown in the grids."""
        return list(range(min(self.cfg.analysis.grid_images, self.images.shape[0])))


# ------------------------------------------------------------------------------------------------------ inputs


def adversarial_views(cfg: ExperimentConfig, names: list[str], images: torch.Tensor, labels: torch.Tensor,
                      n_test: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Each attack's views of ``images`` (the first N test images): from the ``paper`` test store (checked fresh
    by the evaluation's rules) when it holds the attack for at least N images, else computed against the pool's
    source model (``attack_views``: the store's seed rule and 8-bit quantisation). Returns (name -> float
    ``(N, C, H, W)``, name -> where it came from)."""
    from mid_core.checkpoint import load_classifier
    from mid_core.datasets import NUM_CLASSES
    from mid_core.quantize import from_uint8
    from pipeline.stages.evaluate import open_test_store
    from pipeline.stages.pool import attack_specs, attack_views, is_slow, test_store_limits

    n = images.shape[0]
    base, slow_n = test_store_limits(cfg, n_test)
    views, sources = {}, {}
    for slow in (False, True):
        wanted = [a for a in names if is_slow(a) == slow]
        if not wanted or "paper" not in cfg.evaluation.protocols:
            continue
        try:
            store = open_test_store(cfg, "paper", slow, slow_n if slow else base)
        except (MissingInputError, StaleInputError) as exc:
            log.info("analysis: not using the paper test store (%s); computing the attacks", str(exc).split(":")[0])
            continue
        if store.num_rows < n:
            continue
        for name in wanted:
            if name in store.attack_names:
                views[name] = from_uint8(torch.from_numpy(store.read_rows(0, n, attacks=[name])[f"adv/{name}"]))
                sources[name] = f"paper test store {store.path}"
    todo = [a for a in names if a not in views]
    if todo:
        role = pool_source_role(cfg)
        source = load_classifier(require_model(cfg, role))
        ev = cfg.evaluation
        t0 = time.perf_counter()
        computed, _ = attack_views(source, images, labels, attack_specs(todo, ev.eps, ev.steps, ev.step_size),
                                   cfg.seed, 0, ev.batch_size, NUM_CLASSES[cfg.data.dataset])
        log.info("analysis: %s computed against the %s on %d images (%.1fs)", ", ".join(todo), role, n,
                 time.perf_counter() - t0)
        for name in todo:
            views[name] = from_uint8(computed[name])
            sources[name] = f"computed against the {role} (pool source), 8-bit"
    return {name: views[name] for name in names}, sources


def load_inputs(cfg: ExperimentConfig) -> AnalysisInputs:
    """The test images, the models that exist and the attacked views (see ``AnalysisInputs``)."""
    from mid_core.checkpoint import load_classifier, load_teacher
    from mid_core.datasets import load_dataset
    from pipeline.executors.base import auto_threads

    torch.set_num_threads(auto_threads(0, 1))
    test = load_dataset(cfg.data.dataset, "test", cfg.data.root, cfg.data.download)
    data = test.subset(cfg.analysis.images)
    paths = ExperimentPaths.of(cfg)
    teacher = load_teacher(require_model(cfg, "teacher"))
    roles = {"undefended": cfg.analysis.undefended, "at": "at", "mid": cfg.analysis.mid_model or cfg.mid.variant}
    models, missing = {}, {}
    for method, role in roles.items():
        if paths.model(role).exists():
            model = load_classifier(paths.model(role))
            for p in model.parameters():
                p.requires_grad_(False)
            models[method] = model
        else:
            missing[method] = f"{paths.model(role)} does not exist"
    views, sources = adversarial_views(cfg, analysis_attacks(cfg), data.images, data.labels, len(test))
    return AnalysisInputs(cfg, data.images, data.labels, {BENIGN: data.images, **views}, teacher,
                          models, {m: r for m, r in roles.items() if m in models}, sources, missing)


# ----------------------------------------------------------------------------------------------------- helpers


def _write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def _need_decoder(inp: AnalysisInputs) -> nn.Module:
    if inp.teacher.decoder is None:
        raise NotAvailable(f"backbone {inp.cfg.model.backbone!r} has no decoder (Teacher.decoder is None), so there "
                           "is no reconstruction D_t(...) to show")
    return inp.teacher.decoder


def _need(inp: AnalysisInputs, methods: tuple[str, ...], what: str) -> dict[str, nn.Module]:
    found = {m: inp.models[m] for m in methods if m in inp.models}
    if not found:
        raise NotAvailable(f"{what} needs a model of {list(methods)}: "
                           + "; ".join(inp.missing.get(m, m) for m in methods))
    return found


def _label(inp: AnalysisInputs, method: str) -> str:
    return f"{method} ({inp.roles[method]})" if inp.roles.get(method, method) != method else method


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    from mid_core.evaluation import accuracy

    return accuracy(model, images, labels, batch_size)


# ----------------------------------------------------------------------------------------------------- figures


def reconstruction_figure(inp: AnalysisInputs, out: Path) -> list[Path]:
    """Fig. 7: clean images and the teacher's reconstructions D_t(E_t(x)), with the decoder's R² (1 - MSE / Var)
    and PSNR / SSIM on all analysed images."""
    from mid_core.analysis import regenerate, regeneration_quality
    from mid_core.analysis.plots import Panel, image_grid
    from mid_core.training import reconstruction_r2

    decoder = _need_decoder(inp)
    recon = regenerate(inp.teacher.encoder, decoder, inp.images, inp.batch_size)
    r2 = reconstruction_r2(inp.teacher, inp.images, inp.batch_size)
    quality = regeneration_quality(inp.images, recon)
    shown = list(range(min(inp.cfg.analysis.show, inp.images.shape[0])))
    png = image_grid(out / "reconstruction.png",
                     [[Panel(inp.images[i]) for i in shown], [Panel(recon[i]) for i in shown]],
                     ["clean x", "D_t(E_t(x))"], [f"#{i} (y={int(inp.labels[i])})" for i in shown],
                     f"teacher reconstructions: R² {r2:.3f}, PSNR {quality['psnr_db']:.1f} dB, SSIM "
                     f"{quality['ssim']:.3f} on {inp.images.shape[0]} test images")
    log.info("analysis reconstruction: R² %.3f, PSNR %.2f dB, SSIM %.3f", r2, quality["psnr_db"], quality["ssim"])
    return [png, _write_json(out / "reconstruction.json", {
        "figure": "reconstruction", "paper": "Fig. 7", "available": True, "images": inp.images.shape[0],
        "r2": r2, **quality, "shown": shown})]


def regeneration_figure(inp: AnalysisInputs, out: Path) -> list[Path]:
    """Fig. 11: per domain, the input, the perturbation, D_t(E_s(x_adv)) of MID and D_t(E_t(x_adv)) of the teacher;
    PSNR / SSIM of both against the clean image and the teacher's accuracy on both (is the decoder path a usable
    purifier?), next to the accuracies on the attacked inputs themselves."""
    from mid_core.analysis import regenerate, regeneration_quality
    from mid_core.analysis.plots import Panel, image_grid, signed_panel
    from mid_core.models import classifier_of

    decoder = _need_decoder(inp)
    mid = _need(inp, ("mid",), "regeneration")["mid"]
    teacher_clf = classifier_of(inp.teacher)
    b, x, y = inp.batch_size, inp.images, inp.labels
    numbers, regen = {}, {}
    for name, xd in inp.domains.items():
        student = regenerate(mid.encoder, decoder, xd, b)
        teacher = regenerate(inp.teacher.encoder, decoder, xd, b)
        regen[name] = (student, teacher)
        numbers[name] = {
            "student": {**regeneration_quality(x, student), "teacher_accuracy": _accuracy(teacher_clf, student, y, b)},
            "teacher": {**regeneration_quality(x, teacher), "teacher_accuracy": _accuracy(teacher_clf, teacher, y, b)},
            "input": {**regeneration_quality(x, xd), "teacher_accuracy": _accuracy(teacher_clf, xd, y, b),
                      "mid_accuracy": _accuracy(mid, xd, y, b)},
            "source": inp.attack_sources.get(name, "clean test images"),
        }
        s, t = numbers[name]["student"], numbers[name]["teacher"]
        log.info("analysis regeneration %s: MID PSNR %.2f dB SSIM %.3f (teacher acc %.3f) | teacher PSNR %.2f dB "
                 "SSIM %.3f (teacher acc %.3f)", name, s["psnr_db"], s["ssim"], s["teacher_accuracy"], t["psnr_db"],
                 t["ssim"], t["teacher_accuracy"])
    cells, rows = [], []
    for i in inp.grid():
        cells += [[Panel(inp.domains[d][i]) for d in inp.domains],
                  [signed_panel(inp.domains[d][i] - x[i]) if d != BENIGN else None for d in inp.domains],
                  [Panel(regen[d][0][i]) for d in inp.domains],
                  [Panel(regen[d][1][i]) for d in inp.domains]]
        rows += [f"#{i} input", "perturbation", "MID D_t(E_s(x))", "teacher D_t(E_t(x))"]
    cols = [f"{d}\nMID {numbers[d]['student']['psnr_db']:.1f} dB\nteacher {numbers[d]['teacher']['psnr_db']:.1f} dB"
            for d in inp.domains]
    png = image_grid(out / "regeneration.png", cells, rows, cols,
                     f"robust regeneration (MID = {inp.roles['mid']}): PSNR against the clean image, "
                     f"{x.shape[0]} test images")
    return [png, _write_json(out / "regeneration.json", {
        "figure": "regeneration", "paper": "Fig. 11", "available": True, "images": x.shape[0],
        "mid_model": inp.roles["mid"], "domains": numbers, "shown": inp.grid(),
        "note": "psnr_db / ssim: against the clean image; teacher_accuracy: E_t then C_t on those images"})]


def _map_figure(inp: AnalysisInputs, out: Path, name: str, paper: str, maps_of: Callable[[nn.Module, torch.Tensor],
                torch.Tensor], models: dict[str, nn.Module], title: str, overlay: bool,
                extra: dict[str, Any]) -> list[Path]:
    """A grid of per-model maps (gradients, attention) for every domain, with the maps' similarity to the benign
    map and their correlation with the clean image on all analysed images."""
    from mid_core.analysis import benign_similarity, image_correlation
    from mid_core.analysis.plots import Panel, image_grid, signed_panel

    maps = {m: {d: maps_of(model, xd) for d, xd in inp.domains.items()} for m, model in models.items()}
    numbers = {m: {d: {"benign_similarity": float(benign_similarity(maps[m][d], maps[m][BENIGN]).mean()),
                       "image_correlation": float(image_correlation(maps[m][d], inp.images).mean()),
                       "mean_abs": float(maps[m][d].abs().mean())}
                   for d in inp.domains} for m in models}
    cells, rows = [], []
    for i in inp.grid():
        cells.append([Panel(inp.domains[d][i]) for d in inp.domains])
        rows.append(f"#{i} input")
        for m in models:
            if overlay:
                cells.append([Panel(inp.domains[d][i], overlay=maps[m][d][i]) for d in inp.domains])
            else:
                cells.append([signed_panel(maps[m][d][i]) for d in inp.domains])
            rows.append(_label(inp, m))
    for m in models:
        log.info("analysis %s %s: similarity to the benign map %s", name, _label(inp, m),
                 " ".join(f"{d}={v['benign_similarity']:.2f}" for d, v in numbers[m].items()))
    png = image_grid(out / f"{name}.png", cells, rows, list(inp.domains), title)
    return [png, _write_json(out / f"{name}.json", {
        "figure": name, "paper": paper, "available": True, "images": inp.images.shape[0],
        "models": {m: inp.roles[m] for m in models}, "maps": numbers, "shown": inp.grid(), **extra})]


def gradients_figure(inp: AnalysisInputs, out: Path) -> list[Path]:
    """Fig. 8: input gradients d CE / dx of the undefended model, AT and MID, for benign and attacked inputs."""
    from mid_core.analysis import input_gradients

    models = _need(inp, METHODS, "the gradient figure")
    return _map_figure(inp, out, "gradients", "Fig. 8",
                       lambda model, xd: input_gradients(model, xd, inp.labels, inp.batch_size), models,
                       "input gradients d CE(f(x), y) / dx (red +, blue -)", overlay=False,
                       extra={"note": "benign_similarity: cosine with the benign image's gradient; image_correlation: "
                                      "Pearson correlation of |gradient| with the clean image"})


def attention_figure(inp: AnalysisInputs, out: Path) -> list[Path]:
    """Fig. 12: Grad-CAM (captum) on the encoder's output feature map for the predicted class, for every model
    whose encoder gives a spatial feature map."""
    from mid_core.analysis import gradcam_maps
    from mid_core.analysis.saliency import gradcam_unavailable_reason
    from mid_core.evaluation import predict

    candidates = _need(inp, METHODS, "the attention figure")
    reasons = {m: gradcam_unavailable_reason(model, inp.images) for m, model in candidates.items()}
    models = {m: model for m, model in candidates.items() if reasons[m] is None}
    if not models:
        raise NotAvailable("; ".join(f"{_label(inp, m)}: {r}" for m, r in reasons.items()))

    def cam(model: nn.Module, xd: torch.Tensor) -> torch.Tensor:
        return gradcam_maps(model, xd, predict(model, xd, inp.batch_size), inp.batch_size)

    return _map_figure(inp, out, "attention", "Fig. 12", cam, models,
                       "Grad-CAM attention on the encoder's feature map, predicted class", overlay=True,
                       extra={"not_available": {m: r for m, r in reasons.items() if r},
                              "note": "benign_similarity: cosine with the benign image's map; image_correlation: "
                                      "Pearson correlation of the map with the clean image"})


def tsne_attacks(inp: AnalysisInputs) -> list[str]:
    """The attacks of the t-SNE figure: ``analysis.tsne_attacks``, else the first pool attack and the first
    analysed attack outside the pool (a known and an unknown one)."""
    if inp.cfg.analysis.tsne_attacks is not None:
        return list(inp.cfg.analysis.tsne_attacks)
    known = [a for a in inp.attacks if a in inp.cfg.pool.attacks][:1]
    unknown = [a for a in inp.attacks if a not in inp.cfg.pool.attacks][:1]
    return known + unknown or inp.attacks[:2]


def tsne_figure(inp: AnalysisInputs, out: Path) -> list[Path]:
    """Fig. 9: t-SNE of encoder features of benign and attacked inputs (one embedding per model, a panel per
    domain, points coloured by class), and per model and attack the distance attacks move a clean image's feature
    relative to the distance between class centroids, on all analysed images."""
    from mid_core.analysis import encode, relative_feature_distance, tsne_embedding
    from mid_core.analysis.plots import scatter_panels

    models = _need(inp, ("undefended", "mid"), "the t-SNE figure")
    a = inp.cfg.analysis
    k = min(a.tsne_images, inp.images.shape[0])
    embedded = [BENIGN, *tsne_attacks(inp)]
    relative, coords = {}, {}
    for m, model in models.items():
        feats = {d: encode(model.encoder, xd, inp.batch_size) for d, xd in inp.domains.items()}
        per_attack = {d: relative_feature_distance(feats[BENIGN], feats[d], inp.labels) for d in inp.attacks}
        relative[m] = {**per_attack, "mean": float(np.mean(list(per_attack.values()))) if per_attack else 0.0}
        points = tsne_embedding(torch.cat([feats[d][:k] for d in embedded]), inp.cfg.seed, a.tsne_perplexity)
        coords[m] = {d: points[j * k:(j + 1) * k] for j, d in enumerate(embedded)}
        log.info("analysis tsne %s: attacked-to-clean feature distance / class-centroid distance: %s", _label(inp, m),
                 " ".join(f"{d}={v:.3f}" for d, v in relative[m].items()))
    png = scatter_panels(out / "tsne.png", {_label(inp, m): c for m, c in coords.items()},
                         inp.labels[:k].numpy(), f"t-SNE of encoder features, {k} test images per domain")
    return [png, _write_json(out / "tsne.json", {
        "figure": "tsne", "paper": "Fig. 9", "available": True, "images": inp.images.shape[0], "tsne_images": k,
        "models": {m: inp.roles[m] for m in models}, "relative_feature_distance": relative,
        "labels": inp.labels[:k].tolist(),
        "embedding": {m: {d: v.round(3).tolist() for d, v in c.items()} for m, c in coords.items()},
        "note": "relative_feature_distance: mean ||E(x) - E(x_adv)|| / mean distance between class centroids of "
                "E(x); 0 = the attack does not move the features"})]


def _metric_history(cfg: ExperimentConfig, variant: str, key: str) -> dict[int, float]:
    """epoch -> value of ``key`` from the MLflow run of MID variant ``variant`` (empty without MLflow or a run)."""
    from pipeline.tracking import mlflow_available

    run_ids = ExperimentPaths.of(cfg).run_ids
    run_id = json.loads(run_ids.read_text()).get(variant) if run_ids.exists() else None
    if not run_id or not mlflow_available():
        return {}
    from mlflow.tracking import MlflowClient

    try:
        return {int(m.step): float(m.value) for m in MlflowClient(cfg.tracking_uri()).get_metric_history(run_id, key)}
    except Exception as exc:  # a store that has no such run: the curve falls back to the checkpoints
        log.info("analysis sparsity: no MLflow history of %s (%s)", variant, type(exc).__name__)
        return {}


def sparsity_points(cfg: ExperimentConfig, variant: str, teacher: Any) -> dict[int, dict[str, Any]]:
    """epoch -> {value, source} of the MID student's Σθ² (its encoder): the per-epoch metric its training logged
    (MLflow's history of every epoch, else the metrics of the epoch checkpoints left in ``training/<variant>/`` and
    of ``models/<variant>.pt``; computed from their weights for checkpoints that predate the metric); epoch 0 is the
    teacher's encoder when the student started from it."""
    from mid_core.analysis import squared_weight_sum
    from mid_core.checkpoint import load_classifier, read_checkpoint
    from pipeline.stages.mid import SPARSITY_METRIC

    paths = ExperimentPaths.of(cfg)
    final = paths.model(variant)
    saved = read_checkpoint(final)
    mid_cfg = (saved.get("config") or {}).get("mid", {})
    points: dict[int, dict[str, Any]] = {}
    if mid_cfg.get("student_init", "teacher") == "teacher" and mid_cfg.get("use_distillation", True):
        points[0] = {"value": squared_weight_sum(teacher.encoder), "source": "the teacher's encoder (student start)"}
    files = sorted(paths.training(variant).glob("deployed_epoch*.pt"))
    for path in [*files, final]:
        metrics = read_checkpoint(path).get("metrics", {})
        epoch = int(metrics.get("epoch", 0))
        if epoch > 0 and SPARSITY_METRIC in metrics:
            points[epoch] = {"value": float(metrics[SPARSITY_METRIC]), "source": f"{path} metric {SPARSITY_METRIC}"}
        elif epoch > 0:
            points[epoch] = {"value": squared_weight_sum(load_classifier(path).encoder), "source": f"{path} weights"}
    for epoch, value in _metric_history(cfg, variant, SPARSITY_METRIC).items():
        points[epoch] = {"value": value, "source": f"MLflow metric {SPARSITY_METRIC}"}
    return dict(sorted(points.items()))


def sparsity_figure(inp: AnalysisInputs, out: Path) -> list[Path]:
    """Fig. 10: the sparsity index Σθ² of MID's student encoder per training epoch, with the undefended and AT
    encoders' as reference lines."""
    from mid_core.analysis import squared_weight_sum
    from mid_core.analysis.plots import curves

    _need(inp, ("mid",), "the sparsity curve")
    variant = inp.roles["mid"]
    points = sparsity_points(inp.cfg, variant, inp.teacher)
    refs = {_label(inp, m): squared_weight_sum(inp.models[m].encoder) for m in ("undefended", "at") if m in inp.models}
    epochs = list(points)
    png = curves(out / "sparsity.png", {f"MID ({variant})": {"Σθ² of E_s": (epochs, [p["value"] for p in points.values()])}},
                 "epoch", "Σθ² (encoder)", "sparsity index I = Σ||θ||² of the encoder per MID epoch", hlines=refs)
    log.info("analysis sparsity %s: %s; references %s", variant,
             " ".join(f"{e}:{p['value']:.1f}" for e, p in points.items()), refs)
    return [png, _write_json(out / "sparsity.json", {
        "figure": "sparsity", "paper": "Fig. 10", "available": True, "mid_model": variant,
        "epochs": {str(e): p for e, p in points.items()}, "references": refs})]


def frequency_figures(inp: AnalysisInputs, out: Path) -> list[Path]:
    """Figs. 13-14: accuracy of each model on low-pass and high-pass filtered benign and attacked inputs against
    the cut-off radius; one figure (and JSON) per filter."""
    from mid_core.analysis import filtered_accuracy
    from mid_core.analysis.frequency import FILTERS
    from mid_core.analysis.plots import curves

    models = _need(inp, METHODS, "the frequency analysis")
    radii = list(inp.cfg.analysis.frequency_radii)
    files = []
    for kind in FILTERS:
        acc = {m: {d: filtered_accuracy(model, xd, inp.labels, kind, radii, inp.batch_size)
                   for d, xd in inp.domains.items()} for m, model in models.items()}
        files.append(curves(out / f"frequency_{kind}.png",
                            {_label(inp, m): {d: (radii, v) for d, v in per.items()} for m, per in acc.items()},
                            "cut-off radius R", "accuracy", f"accuracy on {kind.replace('_', '-')} filtered inputs "
                            f"({inp.images.shape[0]} test images)", ylim=(0.0, 1.02)))
        files.append(_write_json(out / f"frequency_{kind}.json", {
            "figure": f"frequency_{kind}", "paper": "Figs. 13-14", "available": True, "filter": kind,
            "radii": radii, "images": inp.images.shape[0], "models": {m: inp.roles[m] for m in models},
            "accuracy": acc}))
        log.info("analysis %s: %s", kind, "; ".join(
            f"{_label(inp, m)} benign R={radii[0]}..{radii[-1]}: {per[BENIGN][0]:.2f}..{per[BENIGN][-1]:.2f}"
            for m, per in acc.items()))
    return files


FIGURES: dict[str, Callable[[AnalysisInputs, Path], list[Path]]] = {
    "reconstruction": reconstruction_figure, "regeneration": regeneration_figure, "gradients": gradients_figure,
    "tsne": tsne_figure, "sparsity": sparsity_figure, "attention": attention_figure, "frequency": frequency_figures,
}
PAPER = {"reconstruction": "Fig. 7", "regeneration": "Fig. 11", "gradients": "Fig. 8", "tsne": "Fig. 9",
         "sparsity": "Fig. 10", "attention": "Fig. 12", "frequency": "Figs. 13-14"}


def make_figures(inp: AnalysisInputs, figures: list[str], out: Path) -> dict[str, dict[str, Any]]:
    """Draw each of ``figures`` into ``out``; figure -> {available, files, seconds} or {available: False, reason}
    (whose JSON, ``<figure>.json``, says the same)."""
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict[str, Any]] = {}
    for name in figures:
        t0 = time.perf_counter()
        try:
            files = FIGURES[name](inp, out)
            done[name] = {"available": True, "files": [f.name for f in files], "seconds": time.perf_counter() - t0}
        except NotAvailable as exc:
            log.info("analysis %s (%s): not available: %s", name, PAPER[name], exc)
            note = _write_json(out / f"{name}.json", {"figure": name, "paper": PAPER[name], "available": False,
                                                      "reason": str(exc)})
            done[name] = {"available": False, "reason": str(exc), "files": [note.name]}
    return done


@contextmanager
def _tracked(cfg: ExperimentConfig) -> Iterator[Any]:
    """The MLflow run the analysis is logged to: the evaluation's run when it was tracked (resumed), else a run of
    its own (``<config>/analyze``); a run that records nothing without MLflow."""
    from pipeline.tracking import StageRun, check_tracking, mlflow_available, stage_run

    run_ids = ExperimentPaths.of(cfg).run_ids
    eval_run = json.loads(run_ids.read_text()).get("evaluate") if run_ids.exists() else None
    if mlflow_available() and eval_run:
        import mlflow

        check_tracking(cfg)
        try:
            mlflow.get_run(eval_run)
        except Exception:  # the evaluation was tracked in another store: log to a run of our own
            eval_run = None
        if eval_run:
            with mlflow.start_run(run_id=eval_run):
                yield StageRun(eval_run, cfg.tracking_uri())
            return
    with stage_run(cfg, "analyze", method="analysis", log_config=False) as run_:
        yield run_


def run(cfg: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """Make the figures of ``analysis.figures`` under ``<output_dir>/analysis/`` and log them to MLflow; returns
    ``index.json``'s figure entries."""
    out = ExperimentPaths.of(cfg).root / "analysis"
    with _tracked(cfg) as run_:
        t0 = time.perf_counter()
        inp = load_inputs(cfg)
        figures = make_figures(inp, list(cfg.analysis.figures), out)
        index = _write_json(out / "index.json", {
            "config": cfg.name, "dataset": cfg.data.dataset, "backbone": cfg.model.backbone,
            "images": inp.images.shape[0], "models": inp.roles, "missing_models": inp.missing,
            "attacks": inp.attack_sources, "figures": figures, "seconds": time.perf_counter() - t0})
        for entry in figures.values():
            for name in entry["files"]:
                run_.log_artifact(out / name, "analysis")
        run_.log_artifact(index, "analysis")
        run_.log_metrics({"analysis_seconds": time.perf_counter() - t0})
    made = [n for n, e in figures.items() if e["available"]]
    log.info("analysis: %d figure(s) in %s (%s)%s", len(made), out, ", ".join(made),
             "".join(f"; {n}: not available" for n, e in figures.items() if not e["available"]))
    return figures

"""The search space of a study: which backbones, widths and sizes a trial may take, and its training settings.

A trial's settings are ``--set`` overrides (``section.field=value``) on the study's base config, so a trial is
an ordinary run. The space:

- **architecture**: the registry's mobile backbones (MobileNetV2, V3 Small/Large, MobileNet v1), each with the
  widths (``model.alpha``) and input sizes (``model.image_size``) it has ImageNet weights for. Offline, only the
  combinations whose weights file is already in the Keras cache are offered (:func:`architectures` says which
  were left out and why); online Keras downloads what a trial needs.
- **strategy**: feature_extraction (base frozen) or fine_tune (head, then the whole base at a low rate).
- **learning rates**: the head's log-uniform in [1e-4, 1e-2] (or a decade either side of an LR-finder
  suggestion), the fine-tune phase's log-uniform in [1e-6, 1e-4] (the recipe's 1e-5 in the middle).
- **augmentation**: off, light (flips, 10% rotation) or strong (flips, 20% rotation, zoom, contrast); a frozen
  phase runs on cached features of ``augment.head_views`` views of each image (a study may fix that field and
  still sample the augmentation).
- **dropout** before the head: uniform in [0, 0.5].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import backbones

MOBILE = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "mobilenet")
STRATEGIES = ("feature_extraction", "fine_tune")
AUGMENT = {
    "off": {"augment.enabled": False},
    "light": {"augment.enabled": True, "augment.flip": "horizontal", "augment.rotation": 0.1, "augment.zoom": 0.0,
              "augment.contrast": 0.0},
    "strong": {"augment.enabled": True, "augment.flip": "horizontal", "augment.rotation": 0.2, "augment.zoom": 0.2,
               "augment.contrast": 0.2},
}  # fmt: skip
HEAD_LR = (1e-4, 1e-2)
FINE_TUNE_LR = (1e-6, 1e-4)
DROPOUT = (0.0, 0.5)


@dataclass(frozen=True)
class Architecture:
    """One backbone at one width and input size."""

    backbone: str
    alpha: float
    size: int
    weights: str = "imagenet"  # or the path of the default size's file, for a size without a file of its own

    @property
    def key(self) -> str:
        return f"{self.backbone}/{self.alpha:g}/{self.size}"


def weights_file(arch: Architecture) -> str:
    """The ImageNet weights file (without top) Keras loads for ``arch``, as ``keras.applications`` names it."""
    b, a, s = arch.backbone, arch.alpha, arch.size
    if b == "mobilenet_v2":
        return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(a)}_{s}_no_top.h5"
    if b == "mobilenet":
        alpha_text = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}[a]
        return f"mobilenet_{alpha_text}_{s}_tf_no_top.h5"
    kind = "small" if b == "mobilenet_v3_small" else "large"
    return f"weights_mobilenet_v3_{kind}_224_{float(a)}_float_no_top_v2.h5"


def _all_architectures(names: tuple[str, ...] = MOBILE) -> list[Architecture]:
    out = []
    for name in names:
        spec = backbones.get(name)
        for alpha in spec.alphas:
            for size in spec.weight_sizes:
                arch = Architecture(name, float(alpha), int(size))
                try:
                    weights_file(arch)
                except KeyError:  # a width Keras has no file for
                    continue
                out.append(arch)
    return out


def architectures(
    cache: Path | None = None, *, offline: bool = True, names: tuple[str, ...] = MOBILE
) -> tuple[list[Architecture], list[str]]:
    """The architectures a study may try, and one line per backbone left out (its weights are not here).

    Offline, a combination is offered when its weights file is in the Keras cache (``cache``, default
    ``backbones.keras_cache_dir()``); online every combination is (Keras downloads the file).
    """
    every = _all_architectures(names)
    if not offline:
        return every, []
    folder = cache or backbones.keras_cache_dir()
    have, left = [], []
    for name in names:
        default = backbones.get(name).default_size
        missing, borrowed = [], 0
        for a in (a for a in every if a.backbone == name):
            if (folder / weights_file(a)).is_file():
                have.append(a)
                continue
            own = Architecture(a.backbone, a.alpha, default)
            if a.size != default and (folder / weights_file(own)).is_file():
                # what Keras itself does for a size it has no file for: the default size's weights
                have.append(dataclasses.replace(a, weights=str(folder / weights_file(own))))
                borrowed += 1
            else:
                missing.append(a)
        title = backbones.get(name).title
        if borrowed:
            left.append(f"{title}: {borrowed} sizes start from the ImageNet weights trained at {default} px")
        if missing:
            left.append(
                f"{title}: {len(missing)} width/size combinations left out (their ImageNet weights are not in the "
                f"Keras cache, KERAS_HOME/models; e.g. {weights_file(missing[0])})"
            )
    return have, left


class Suggest:
    """What a sampler offers a trial: Optuna's ``Trial`` has these three methods (a fixed dict does too)."""

    suggest_categorical: Callable[..., Any]
    suggest_float: Callable[..., Any]


def lr_range(suggestion: float | None) -> tuple[float, float]:
    """The head's learning-rate range: a decade either side of an LR-finder suggestion, else :data:`HEAD_LR`."""
    if not suggestion or not math.isfinite(suggestion) or suggestion <= 0:
        return HEAD_LR
    return suggestion / 10, min(suggestion * 10, 1.0)


# augment fields that change what a run costs, not which augmentation it learns from: fixing one samples the rest
COST_ONLY = ("augment.head_views",)


def fixed_settings(overrides: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The fields a study's ``--set`` overrides fix for every trial (``section.field`` -> text)."""
    return dict(o.split("=", 1) for o in overrides if "=" in o)


def sample(
    trial: Suggest,
    archs: list[Architecture],
    *,
    lr_suggestion: float | None = None,
    fixed: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One trial's overrides (``section.field`` -> value), sampled from the space; a field the study fixed
    (``fixed``: its ``--set``) is not sampled, and the architectures are narrowed to it.

    Parameter names are conditional (the width of each backbone is its own parameter), so Optuna's TPE models
    each backbone's widths apart.
    """
    fixed = fixed or {}
    pool = [a for a in archs if fixed.get("model.backbone", a.backbone) == a.backbone]
    if "model.alpha" in fixed:
        pool = [a for a in pool if a.alpha == float(fixed["model.alpha"])]
    if not pool:
        raise ValueError("the search space is empty: no backbone it allows has its ImageNet weights here")
    names = sorted({a.backbone for a in pool}, key=MOBILE.index)
    backbone = trial.suggest_categorical("backbone", names)
    alphas = sorted({a.alpha for a in pool if a.backbone == backbone})
    alpha = trial.suggest_categorical(f"alpha[{backbone}]", alphas)
    mine = [a for a in pool if (a.backbone, a.alpha) == (backbone, alpha)]
    if "model.image_size" in fixed:
        size = int(fixed["model.image_size"])
        # its own entry, else the default size's weights (what Keras loads for a size it has no file for)
        default = backbones.get(backbone).default_size
        arch = next((a for a in mine if a.size == size), None) or next(a for a in mine if a.size == default)
        arch = dataclasses.replace(arch, size=size)
    else:
        sizes = sorted({a.size for a in mine})
        size = trial.suggest_categorical(f"size[{backbone}/{alpha:g}]", sizes)
        arch = next(a for a in mine if a.size == size)
    out: dict[str, Any] = {
        "model.backbone": backbone,
        "model.alpha": alpha,
        "model.image_size": size,
        "model.weights": arch.weights,
    }
    strategy = fixed.get("train.strategy") or trial.suggest_categorical("strategy", list(STRATEGIES))
    out["train.strategy"] = strategy
    lo, hi = lr_range(lr_suggestion)
    if "train.learning_rate" not in fixed:
        out["train.learning_rate"] = trial.suggest_float("learning_rate", lo, hi, log=True)
    if strategy == "fine_tune" and "train.fine_tune_learning_rate" not in fixed:
        out["train.fine_tune_learning_rate"] = trial.suggest_float("fine_tune_learning_rate", *FINE_TUNE_LR, log=True)
    if not any(k.startswith("augment.") and k not in COST_ONLY for k in fixed):
        out.update(AUGMENT[trial.suggest_categorical("augment", list(AUGMENT))])
    if "model.dropout" not in fixed:
        out["model.dropout"] = round(trial.suggest_float("dropout", *DROPOUT), 3)
    return out


def overrides_text(overrides: dict[str, Any]) -> list[str]:
    """``--set`` strings for overrides (``train.learning_rate=0.001``)."""

    def text(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v) if isinstance(v, float) else str(v)

    return [f"{k}={text(v)}" for k, v in overrides.items()]

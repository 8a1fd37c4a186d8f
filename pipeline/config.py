"""Run configuration: frozen dataclasses, one schema for the UI, the CLI, config.json and the worker.

Every field has a default and a one-line meaning (the ``Attributes:`` docstrings below, also used
as help text by the CLI and the app). Invalid values raise :class:`ConfigError` naming the dotted
field, the value and what is allowed. Variants are derived with :func:`dataclasses.replace` or
:func:`apply_overrides`; nothing mutates a config in place.

This module imports no TensorFlow, so the app can build and validate configs cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import backbones
from pipeline.host.atomic import atomic_write_text
from pipeline.host.exitcodes import UserError


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the field and what is allowed.

    Attributes:
        field: The dotted key at fault (``data.val_fraction``), when one is.
        reason: What is allowed, without the key (a form shows it beside its own label).
    """

    def __init__(self, message: str, *, field: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.field = field
        self.reason = reason or message


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: {allowed}.", field=key, reason=allowed)


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(key, value, "choose one of " + ", ".join(choices))


def _check_range(key: str, value: Any, lo: float, hi: float, *, lo_open=False, hi_open=False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(key, value, "must be a number")
    if not math.isfinite(value):
        _fail(key, value, "must be a finite number (not nan or infinity)")
    too_low = value <= lo if lo_open else value < lo
    too_high = value >= hi if hi_open else value > hi
    if too_low or too_high:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        _fail(key, value, f"must be in {left}{lo}, {hi}{right}")


def _check_int(key: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(key, value, "must be a whole number")
    if value < lo or (hi is not None and value > hi):
        _fail(key, value, f"must be at least {lo}" + (f" and at most {hi}" if hi is not None else ""))


STRATEGIES = ("feature_extraction", "fine_tune", "freeze_first_k", "from_scratch")
SCHEDULES = ("constant", "exponential", "cosine")
FLIPS = ("none", "horizontal", "vertical", "horizontal_and_vertical")
CLASS_WEIGHTS = ("auto", "balanced", "none")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
BACKENDS = ("", "tensorflow", "jax")
TEST_FROM = ("none", "train", "val")


@dataclass(frozen=True)
class DataConfig:
    """How images are split and cached.

    Attributes:
        val_fraction: Share of each class held out for validation when the data has no val split.
        test_fraction: Share of each class held out for the final test when the data has no test split (with
            train/ and val/ folders, only where ``test_from`` says to carve it from).
        test_from: With train/ and val/ folders and no test/: none (no test split: evaluation measures val/,
            which also chose the best checkpoint), train (test_fraction of each class carved out of train/) or
            val (carved out of val/).
        cache_memory_mb: Memory for the resized images, halved between the train and val caches: a split that
            fits its half is kept in the process; otherwise (and by default, 0) it is a flat file under
            ``TRANSFER_STUDIO_HOME/scratch`` read a batch at a time, whose pages sit in the kernel's page
            cache: as fast here, and memory the system can reclaim instead of the run's RSS.
        max_image_pixels: Images with more pixels are refused as decompression bombs.
        max_zip_bytes: A zip that declares or expands to more bytes than this is refused.
        max_zip_files: A zip with more entries than this is refused.
    """

    val_fraction: float = 0.2
    test_fraction: float = 0.1
    test_from: str = "none"
    cache_memory_mb: int = 0
    max_image_pixels: int = 89_478_485
    max_zip_bytes: int = 4 * 1024**3
    max_zip_files: int = 200_000

    def __post_init__(self) -> None:
        _check_range("data.val_fraction", self.val_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        _check_range("data.test_fraction", self.test_fraction, 0.0, 1.0, hi_open=True)
        if (held := self.val_fraction + self.test_fraction) >= 0.9:
            reason = (
                f"val_fraction + test_fraction = {self.val_fraction:g} + {self.test_fraction:g} = {held:.3g} must "
                "stay below 0.9 so that something is left to train on; lower one of them"
            )
            raise ConfigError(
                f"data.val_fraction and data.test_fraction are not allowed together: {reason}.",
                field="data.test_fraction",
                reason=reason,
            )
        _check_choice("data.test_from", self.test_from, TEST_FROM)
        _check_int("data.cache_memory_mb", self.cache_memory_mb, 0)
        _check_int("data.max_image_pixels", self.max_image_pixels, 1)
        _check_int("data.max_zip_bytes", self.max_zip_bytes, 1)
        _check_int("data.max_zip_files", self.max_zip_files, 1)


@dataclass(frozen=True)
class AugmentConfig:
    """Random transforms applied to training images only (never exported).

    Attributes:
        enabled: Apply augmentation while training (off: the frozen-base phase can use cached features).
        flip: Random flips: none, horizontal, vertical or horizontal_and_vertical.
        rotation: Largest random rotation, as a fraction of a full turn (0.1 = 36 degrees).
        zoom: Largest random zoom in or out, as a fraction of the image size.
        translation: Largest random shift, as a fraction of the image size.
        contrast: Largest random contrast change, as a fraction.
        brightness: Largest random brightness change, as a fraction of the 0..255 range.
        head_views: Head phase (base frozen): the base sees each training image this many times once, the first
            as it is and each other as one augmented copy, and the head trains on those pooled features (epoch
            e on view e mod head_views); 0 = every head epoch augments the images through the base (the Keras
            guide's way, slower: measured in BENCHMARKS.md).
    """

    enabled: bool = True
    flip: str = "horizontal"
    rotation: float = 0.1
    zoom: float = 0.0
    translation: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0
    head_views: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            _fail("augment.enabled", self.enabled, "must be true or false")
        _check_int("augment.head_views", self.head_views, 0, 16)
        _check_choice("augment.flip", self.flip, FLIPS)
        for name in ("rotation", "zoom", "translation", "contrast", "brightness"):
            _check_range(f"augment.{name}", getattr(self, name), 0.0, 1.0, hi_open=name != "rotation")

    @property
    def cached_views(self) -> int:
        """Views of each training image whose features the head phase computes once: ``head_views`` with
        augmentation on, else one (the images as they are); 0: the base runs every head epoch."""
        return self.head_views if self.active else 1

    @property
    def active(self) -> bool:
        """True when augmentation is enabled and at least one transform does something."""
        return self.enabled and (
            self.flip != "none"
            or any(getattr(self, n) > 0 for n in ("rotation", "zoom", "translation", "contrast", "brightness"))
        )


@dataclass(frozen=True)
class ModelConfig:
    """The network: a pretrained backbone plus a new classification head.

    Attributes:
        backbone: Backbone architecture (see `python -m pipeline backbones`).
        alpha: Width multiplier for MobileNet-family backbones (ignored by the others).
        image_size: Square input size in pixels; images are resized to it once.
        weights: imagenet (downloaded into the Keras cache), none (random init), or a weights file path.
        dropout: Dropout rate before the final dense layer of the head.
    """

    backbone: str = "mobilenet_v2"
    alpha: float = 0.35
    image_size: int = 224
    weights: str = "imagenet"
    dropout: float = 0.2

    def __post_init__(self) -> None:
        _check_choice("model.backbone", self.backbone, backbones.names())
        spec = backbones.get(self.backbone)
        _check_int("model.image_size", self.image_size, spec.min_size, 1024)
        if spec.alphas and (isinstance(self.alpha, bool) or self.alpha not in spec.alphas):
            _fail("model.alpha", self.alpha, f"{self.backbone} accepts " + ", ".join(map(str, spec.alphas)))
        if not isinstance(self.weights, str) or not self.weights:
            _fail("model.weights", self.weights, "use imagenet, none, or the path of a weights file")
        if self.weights == "imagenet" and not spec.has_imagenet:
            _fail(
                "model.weights",
                self.weights,
                f"{self.backbone} has no pretrained weights; use model.weights=none (with train.strategy=from_scratch)",
            )
        if self.weights not in ("imagenet", "none") and not Path(self.weights).expanduser().is_file():
            _fail("model.weights", self.weights, "the file does not exist; use imagenet, none, or an existing file")
        _check_range("model.dropout", self.dropout, 0.0, 1.0, hi_open=True)


@dataclass(frozen=True)
class TrainConfig:
    """How the model is trained.

    Attributes:
        strategy: feature_extraction, fine_tune, freeze_first_k or from_scratch.
        head_epochs: Epochs of the first phase (the new head on a frozen base; every layer for from_scratch).
        fine_tune_epochs: Epochs of the second phase (fine_tune and freeze_first_k only).
        batch_size: Images per training step (16: on a CPU, more accurate than 32 at the same epochs on both
            benchmark sets and lighter; on a GPU raise it for speed).
        learning_rate: Adam learning rate of the first phase.
        fine_tune_learning_rate: Adam learning rate after unfreezing (keep it very low, about 1e-5).
        unfreeze_top: fine_tune: how many of the base's top layers to unfreeze (0 = all of them).
        freeze_first_k: freeze_first_k: how many of the base's first layers stay frozen (0 = half of them).
        lr_schedule: constant, exponential (decays each epoch by lr_decay_rate) or cosine.
        lr_decay_rate: Per-epoch factor of the exponential schedule.
        label_smoothing: Label smoothing of the cross-entropy loss.
        class_weight: auto (balanced when classes are imbalanced), balanced, or none.
        early_stopping_patience: Stop a phase after this many epochs without val_loss improving (0 = off).
        seed: Seed for the split, shuffling, augmentation and initialisation.
        progress_every: Write a progress line to metrics.jsonl every this many batches.
        deterministic: Bit-for-bit repeatable training (TensorFlow op determinism; somewhat slower).
        gpus: GPUs a job asks for: the local worker gives it that many of its own (0 = one, where there is a GPU);
            Ray schedules it on a node with that many (0 = none). With more than one the run trains
            data-parallel on all of them.
        devices: Devices one run trains data-parallel on: 0 = train.gpus of the GPUs the process sees (0: one),
            or the CPU as one device; N > 1 on a CPU splits it into N logical devices (for tests and checks).
        precision: float32 (default on every device), mixed_float16 or mixed_bfloat16. Measured on an H100
            for MobileNetV2 0.35 @ 224, mixed precision was slower (bf16 2,185 vs 3,064 images/s at batch 32,
            ~99 s to compile); model.keras and every export are float32 whatever the training precision.
        backend: Keras backend the run trains on: tensorflow, jax, or empty for $KERAS_BACKEND (else
            tensorflow). On jax the training process never imports TensorFlow.
        init_from: A finished run folder whose best weights this run starts from (``train --from``), so a
            retrain on corrected data continues from it; empty: the backbone's own weights.
        from_phase: With ``init_from``: fine_tune (default: the parent trained the head; fine-tune again) or
            head (only the head trains, the base stays frozen). A from_scratch run repeats its one phase.
    """

    strategy: str = "fine_tune"
    head_epochs: int = 5
    fine_tune_epochs: int = 5
    batch_size: int = 16
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-5
    unfreeze_top: int = 0
    freeze_first_k: int = 0
    lr_schedule: str = "constant"
    lr_decay_rate: float = 0.6
    label_smoothing: float = 0.0
    class_weight: str = "auto"
    early_stopping_patience: int = 3
    seed: int = 42
    progress_every: int = 5
    deterministic: bool = False
    gpus: int = 0
    devices: int = 0
    precision: str = "float32"
    backend: str = ""
    init_from: str = ""
    from_phase: str = "fine_tune"

    def __post_init__(self) -> None:
        _check_choice("train.strategy", self.strategy, STRATEGIES)
        _check_int("train.head_epochs", self.head_epochs, 1, 10_000)
        _check_int("train.fine_tune_epochs", self.fine_tune_epochs, 0, 10_000)
        _check_int("train.batch_size", self.batch_size, 1, 4096)
        _check_range("train.learning_rate", self.learning_rate, 0.0, 10.0, lo_open=True)
        _check_range("train.fine_tune_learning_rate", self.fine_tune_learning_rate, 0.0, 10.0, lo_open=True)
        _check_int("train.unfreeze_top", self.unfreeze_top, 0)
        _check_int("train.freeze_first_k", self.freeze_first_k, 0)
        _check_choice("train.lr_schedule", self.lr_schedule, SCHEDULES)
        _check_range("train.lr_decay_rate", self.lr_decay_rate, 0.0, 1.0, lo_open=True)
        _check_range("train.label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        _check_choice("train.class_weight", self.class_weight, CLASS_WEIGHTS)
        _check_int("train.early_stopping_patience", self.early_stopping_patience, 0)
        _check_int("train.seed", self.seed, 0, 2**31 - 1)
        _check_int("train.progress_every", self.progress_every, 1)
        if not isinstance(self.deterministic, bool):
            _fail("train.deterministic", self.deterministic, "must be true or false")
        _check_int("train.gpus", self.gpus, 0, 64)
        _check_int("train.devices", self.devices, 0, 64)
        _check_choice("train.precision", self.precision, PRECISIONS)
        if self.backend not in BACKENDS:
            _fail("train.backend", self.backend, "choose tensorflow or jax, or leave it empty for $KERAS_BACKEND")
        if not isinstance(self.init_from, str):
            _fail("train.init_from", self.init_from, "must be a run folder path or empty")
        _check_choice("train.from_phase", self.from_phase, ("fine_tune", "head"))

    @property
    def two_phase(self) -> bool:
        """True for strategies that train the head first, then unfreeze (part of) the base."""
        return self.strategy in ("fine_tune", "freeze_first_k") and self.fine_tune_epochs > 0


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs besides the data; saved as config.json in the run folder.

    Attributes:
        data: Splitting and caching (DataConfig).
        augment: Training-time augmentation (AugmentConfig).
        model: Backbone and head (ModelConfig).
        train: Strategy and optimisation (TrainConfig).
    """

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        spec = backbones.get(self.model.backbone)
        if not spec.has_imagenet and self.train.strategy != "from_scratch" and self.model.weights == "none":
            _fail(
                "train.strategy",
                self.train.strategy,
                f"{self.model.backbone} has no pretrained weights to transfer; use train.strategy=from_scratch",
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def warnings(self) -> list[str]:
        """Legal but probably unintended combinations, worded for the user."""
        out = []
        if self.train.strategy != "from_scratch" and self.model.weights == "none":
            out.append(
                f"train.strategy={self.train.strategy} with model.weights=none transfers nothing: "
                "the base starts from random weights. Use model.weights=imagenet or train.strategy=from_scratch."
            )
        if self.train.strategy == "from_scratch" and self.model.weights not in ("none",):
            out.append("train.strategy=from_scratch ignores model.weights: every layer starts from random values.")
        if self.train.fine_tune_learning_rate > 1e-3 and self.train.two_phase:
            out.append(
                f"train.fine_tune_learning_rate={self.train.fine_tune_learning_rate} is high for unfrozen "
                "pretrained layers; about 1e-5 keeps them from being wrecked."
            )
        return out


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "train": TrainConfig,
}


@dataclass(frozen=True)
class Phase:
    """One phase of training: its name (``head``, ``fine_tune`` or ``scratch``), epochs and learning rate."""

    name: str
    epochs: int
    learning_rate: float


def phases_for(cfg: RunConfig) -> list[Phase]:
    """The phases a strategy trains, in order."""
    t = cfg.train
    if t.strategy == "from_scratch":
        return [Phase("scratch", t.head_epochs, t.learning_rate)]
    if t.init_from and t.two_phase and t.from_phase == "fine_tune":
        return [Phase("fine_tune", t.fine_tune_epochs, t.fine_tune_learning_rate)]  # the parent trained the head
    out = [Phase("head", t.head_epochs, t.learning_rate)]
    if t.init_from:
        return out
    if t.two_phase:
        out.append(Phase("fine_tune", t.fine_tune_epochs, t.fine_tune_learning_rate))
    return out


def field_help() -> dict[str, str]:
    """Dotted key -> meaning, parsed from each section's ``Attributes:`` docstring (an attribute's more indented
    continuation lines joined to it)."""
    out: dict[str, str] = {}
    for section, cls in SECTIONS.items():
        doc = (cls.__doc__ or "").split("Attributes:", 1)[-1]
        key, indent = None, None
        for line in doc.splitlines():
            depth = len(line) - len(line.lstrip())
            name, sep, text = line.strip().partition(":")
            if sep and name.isidentifier() and (indent is None or depth == indent):
                key, indent = f"{section}.{name}", depth
                out[key] = text.strip()
            elif key and line.strip() and depth > (indent or 0):
                out[key] += " " + line.strip()
    return out


def _field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, raw: Any, kind: type) -> Any:
    """Converts a JSON/TOML/CLI value to the field's type, or raises ConfigError naming the key."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return raw.strip().lower() in ("true", "1", "yes", "on")
        _fail(key, raw, "must be true or false")
    if kind is int:
        if isinstance(raw, bool):
            _fail(key, raw, "must be a whole number")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str):
            try:
                return int(raw.strip().replace("_", ""))
            except ValueError:
                pass
        _fail(key, raw, "must be a whole number")
    if kind is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw.strip())
            except ValueError:
                pass
        _fail(key, raw, "must be a number")
    if kind is str:
        if isinstance(raw, str):
            return raw.strip()
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return str(raw)
        _fail(key, raw, "must be text")
    raise AssertionError(f"unhandled field type {kind} for {key}")


def from_dict(data: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Builds a RunConfig from nested ``{"train": {"seed": 1}}`` data on top of ``base``.

    Raises:
        ConfigError: for an unknown section or key, or an invalid value.
    """
    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping of sections (data, augment, model, train).")
    base = base or RunConfig()
    sections = {}
    for name, values in data.items():
        if name not in SECTIONS:
            raise ConfigError(f"unknown config section {name!r}; sections are: {', '.join(SECTIONS)}.")
        if not isinstance(values, dict):
            raise ConfigError(f"config section {name!r} must be a table of key = value.")
        types = _field_types(SECTIONS[name])
        changes = {}
        for key, raw in values.items():
            if key not in types:
                raise ConfigError(f"unknown config key {name}.{key}; {name} keys are: {', '.join(types)}.")
            changes[key] = _coerce(f"{name}.{key}", raw, types[key])
        sections[name] = changes
    merged = {
        name: dataclasses.replace(getattr(base, name), **sections[name]) if name in sections else getattr(base, name)
        for name in SECTIONS
    }
    return RunConfig(**merged)


def build(values: dict[str, Any], base: RunConfig | None = None) -> tuple[RunConfig | None, dict[str, str]]:
    """A RunConfig from dotted ``{"train.seed": 1}`` values on ``base`` (a form's fields), with every invalid
    field's reason as data.

    Every invalid field is named, not only the first: a field is invalid when it fails on its own (on ``base``)
    and also beside the other values of its section (where those make a valid section: small_cnn alone is
    refused with ImageNet weights, beside ``weights=none`` it is fine). The test fraction is checked only once
    the validation fraction is valid (their sum is one rule). Then the whole config, for the rules across fields.

    Returns:
        (the config, or None when a field is invalid; ``{field: reason}``, the key "" for an error that names
        no field).

    Raises:
        KeyError: a key is not a config field (a programming error, not a user's).
    """
    base = base or RunConfig()
    changes: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or name not in _field_types(SECTIONS[section]):
            raise KeyError(f"{key} is not a config field")
        changes.setdefault(section, {})[name] = value

    def fails(section: str, fields: dict[str, Any]) -> ConfigError | None:
        try:
            dataclasses.replace(getattr(base, section), **fields)
        except ConfigError as exc:
            return exc
        return None

    errors: dict[str, str] = {}
    for key in values:
        section, _, name = key.partition(".")
        if key == "data.test_fraction" and "data.val_fraction" in errors:
            continue
        alone = fails(section, {name: values[key]})
        if alone is None:
            continue
        others = {k: v for k, v in changes[section].items() if k != name}
        if fails(section, others) is None:  # the rest of the form's section is valid: judge the field beside it
            beside = fails(section, changes[section])
            if beside is None:
                continue
            errors[key] = beside.reason if beside.field == key else alone.reason
        else:
            errors[key] = alone.reason
    if errors:
        return None, errors
    try:
        return RunConfig(
            **{name: dataclasses.replace(getattr(base, name), **changes.get(name, {})) for name in SECTIONS}
        ), {}
    except ConfigError as exc:
        return None, {exc.field or "": exc.reason if exc.field else str(exc)}


def parse_override(text: str) -> tuple[str, str, str]:
    """Splits ``section.key=value`` into its parts, or raises ConfigError."""
    dotted, sep, value = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not sep or not dot or not key:
        raise ConfigError(f"--set {text!r} must look like section.key=value, for example train.seed=1.")
    return section, key, value


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Applies ``--set section.key=value`` strings (values parsed to the field's type)."""
    nested: dict[str, dict[str, str]] = {}
    for text in overrides:
        section, key, value = parse_override(text)
        nested.setdefault(section, {})[key] = value
    return from_dict(nested, base=config)


def load(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """Reads a RunConfig from a ``.toml`` or ``.json`` file (missing keys keep their defaults)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}.") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at position "
            f"{exc.start}); save it as UTF-8."
        ) from exc
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"config file {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {exc}."
        ) from exc
    if path.name == "config.json" and isinstance(data, dict):  # a run folder's, written whole by save()
        for dotted, value in RUN_KEYS_ADDED_LATER.items():
            section, key = dotted.split(".")
            if isinstance(data.get(section), dict):
                data[section].setdefault(key, value)
    return from_dict(data, base=base)


# Keys added after runs were first saved, with the value that reproduces what a run saved without them did
# (a run folder's config.json is written whole, so a missing key means an older run: resuming it trains on).
RUN_KEYS_ADDED_LATER: dict[str, Any] = {"augment.head_views": 0}


def save(config: RunConfig, path: str | Path) -> None:
    """Writes config.json atomically."""
    atomic_write_text(Path(path), config.to_json())

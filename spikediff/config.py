"""Model and training configuration: dataclasses, named presets, TOML files.

A checkpoint stores `Config.to_dict()`, so every run can be rebuilt from its
checkpoint alone.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SpikediffError


class ConfigError(SpikediffError):
    pass


@dataclass
class VQConfig:
    T: int = 16
    enc_channels: tuple[int, ...] = (32, 64)
    code_dim: int = 16
    codebook_size: int = 128
    dec_channels: tuple[int, ...] = (64, 32)
    commitment: float = 0.25
    psp_decay: float = 0.8
    # Re-seed codes unused for `restart_every` steps from current encoder
    # features; the paper has none, and loses codebook capacity to dead codes.
    restart_every: int = 0


@dataclass
class DenoiserConfig:
    T: int = 16
    channels: tuple[int, ...] = (64, 128, 256, 512, 256)
    # "raw": the paper's input, token ids and t as two float channels.
    # "embed": one-hot token grid and one-hot t through a learned 1x1 synapse.
    token_input: str = "raw"
    embed_dim: int = 64


@dataclass(frozen=True)
class Refinement:
    """The optional corrector after sampling (diffusion.sample_tokens): `steps`
    passes that each re-mask a random `fraction` of the grid and redraw it at
    `temperature`; steps = 0: none, as published."""
    steps: int = 0
    fraction: float = 0.2
    temperature: float = 0.5


@dataclass
class DiffusionConfig:
    steps: int = 0  # 0: one step per latent token (49 on 28x28), as published
    # The sampling settings (temperature and refinement) are the defaults of
    # every command; `spikediff set-sampling` records tuned ones in a checkpoint.
    temperature: float = 1.0
    # Refinement after sampling (the Refinement above; 0 steps: off, as
    # published): steps, each re-masking and redrawing this fraction of the
    # grid at this temperature.
    refine_steps: int = 0
    refine_fraction: float = 0.2
    refine_temperature: float = 0.5

    def refinement(self) -> Refinement:
        return Refinement(self.refine_steps, self.refine_fraction, self.refine_temperature)


@dataclass
class TrainConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 32
    epochs_vq: int = 100
    epochs_denoiser: int = 200
    # > 0: a third stage trains the VQ-SVAE's decoding side (spike generator,
    # decoder, readout) this many epochs more on the frozen codes, with the
    # adversarial term where adversarial_weight > 0 (from its first step).
    epochs_decoder: int = 0
    seed: int = 42
    denoiser_batch_size: int = 0  # 0: same as batch_size
    # "constant" (the paper's) or "cosine": each stage's rate decays to 0 over
    # its epochs. Side by side on MNIST it gave no gain (README), so presets
    # keep the constant rate.
    lr_schedule: str = "constant"
    # > 0: also keep an exponential moving average of the denoiser's weights
    # with this decay per step; sampling, evaluation and export then use it.
    ema_decay: float = 0.0
    # > 0: the VQ-SVAE's loss also has a patch discriminator's adversarial
    # term with this weight (times the VQGAN gradient-norm ratio), from VQ step
    # `adversarial_start` on; the discriminator is training-only (adversarial.py).
    adversarial_weight: float = 0.0
    adversarial_start: int = 0
    # The last `holdout` train images are never trained on: sampling settings
    # (temperature) are chosen on them, never on the test split.
    holdout: int = 2000
    # > 0: the denoiser's loss also has weight * mean over its spiking layers of
    # max(firing rate - target, 0) (sparsity.py): fewer spikes, less energy on a
    # chip. firing_target: one rate for every layer, or one per layer; () is 0.
    firing_penalty: float = 0.0
    firing_target: tuple[float, ...] = ()
    # "loihi8": quantization-aware training (qat.py) for one 8-bit weight per
    # synapse on Loihi: forwards use the weights the Lava fixed-point mapping
    # writes (straight-through gradient), batch norms frozen; the checkpoint
    # records it, and sampling, export, Lava and the emulator use those weights.
    quantize: str = ""


@dataclass
class Config:
    preset: str = "paper"
    vq: VQConfig = field(default_factory=VQConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        cfg = cls()
        d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
        for (section, key), value in RETIRED.items():
            if d.get(section, {}).get(key, value) != value:
                raise ConfigError(f"{section}.{key} = {d[section][key]!r} is no longer supported "
                                  f"(only {value!r}; see docs/experiments.md)")
            d.get(section, {}).pop(key, None)
        _update(cfg, d, "config")
        return cfg


def _update(obj, values: dict, where: str) -> None:
    known = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting '{where}.{key}'; known: {', '.join(known)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"'{where}.{key}' must be a table of settings")
            _update(current, value, f"{where}.{key}")
        else:
            try:
                if isinstance(current, tuple):  # a lone value is a one-item list
                    items = value if isinstance(value, (list, tuple)) else (value,)
                    kind = type(current[0]) if current else float
                    setattr(obj, key, tuple(kind(v) for v in items))
                else:
                    setattr(obj, key, type(current)(value))
            except (TypeError, ValueError):
                want = "a list of numbers" if isinstance(current, tuple) else type(current).__name__
                raise ConfigError(f"'{where}.{key}' = {value!r} is not {want}") from None


LR_SCHEDULES = ("constant", "cosine")
# Which denoiser of a run that kept a weight average (train.ema_decay) to load.
WEIGHTS = ("ema", "raw")
# Settings that were removed, with the one value older checkpoints may carry
# (the experiments they served: docs/experiments.md).
RETIRED = {("diffusion", "loss"): "elbo"}

PRESETS: dict[str, dict] = {
    # SPEC section 1: the published architecture and recipe.
    "paper": {},
    # Picked by measurement for quality per CPU-minute (see README, benchmarks/).
    "default": {
        "vq": {"T": 4, "restart_every": 100},
        # 64 channels, not 96: 1.6x the epochs per CPU-minute at the same loss per
        # epoch, so FID 37.1 instead of 47.8 after 60 CPU-minutes (README).
        "denoiser": {"T": 4, "channels": (64, 64, 64, 64), "token_input": "embed",
                     "embed_dim": 64},
        # The weight average: held-out FID 45.9 against 48.4 for the last step's
        # weights after the same 8 CPU epochs, each at its best temperature
        # (README); it leaves the trained weights themselves unchanged.
        "train": {"batch_size": 128, "epochs_vq": 3, "epochs_denoiser": 14, "lr": 2e-3,
                  "ema_decay": 0.999},
    },
    # For tests: seconds on a CPU.
    "tiny": {
        "vq": {"T": 2, "enc_channels": (8, 8), "code_dim": 4, "codebook_size": 16,
               "dec_channels": (8, 8), "restart_every": 5},
        "denoiser": {"T": 2, "channels": (8, 8), "token_input": "embed", "embed_dim": 8},
        "train": {"batch_size": 16, "epochs_vq": 1, "epochs_denoiser": 1, "holdout": 0},
    },
}


def load_config(preset: str = "default", file: str | Path | None = None) -> Config:
    """A named preset, optionally overridden by a TOML file with the same sections."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    cfg = Config.from_dict(PRESETS[preset])
    cfg.preset = preset
    if file is not None:
        path = Path(file)
        try:
            values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        _update(cfg, values, "config")
    check(cfg)
    return cfg


def check_refine(r, prefix: str = "--") -> None:
    """Refinement settings (a Refinement), from a config (prefix
    "diffusion.") or the command line."""
    sep = "-" if prefix == "--" else "_"
    if r.steps < 0:
        raise ConfigError(f"{prefix}refine{sep}steps must be >= 0 (0: off), got {r.steps}")
    if not 0 < r.fraction <= 1:
        raise ConfigError(f"{prefix}refine{sep}fraction must be in (0, 1], got {r.fraction}")
    if r.temperature < 0:
        raise ConfigError(f"{prefix}refine{sep}temperature must be >= 0 (0: the most likely "
                          f"token), got {r.temperature}")


def check(cfg: Config) -> None:
    """Settings whose values (not just types) can be wrong."""
    if cfg.train.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"unknown train.lr_schedule '{cfg.train.lr_schedule}'; "
                          f"choose one of: {', '.join(LR_SCHEDULES)}")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1) (0: off), got {cfg.train.ema_decay}")
    if cfg.train.adversarial_weight < 0 or cfg.train.adversarial_start < 0:
        raise ConfigError("train.adversarial_weight and train.adversarial_start must be >= 0 "
                          "(weight 0: off)")
    if cfg.train.firing_penalty < 0:
        raise ConfigError(f"train.firing_penalty must be >= 0 (0: off), got "
                          f"{cfg.train.firing_penalty}")
    bad = [r for r in cfg.train.firing_target if not 0.0 <= r <= 1.0]
    if bad:
        raise ConfigError(f"train.firing_target rates must lie in [0, 1], got {bad[0]}")
    n_layers = len(cfg.denoiser.channels)
    if len(cfg.train.firing_target) not in (0, 1, n_layers):
        raise ConfigError(f"train.firing_target has {len(cfg.train.firing_target)} rates for a "
                          f"denoiser with {n_layers} spiking layers; give one rate, or one per layer")
    check_refine(cfg.diffusion.refinement(), "diffusion.")
    if cfg.train.quantize not in ("", "loihi8"):
        raise ConfigError(f"unknown train.quantize '{cfg.train.quantize}'; choose \"\" (off) "
                          "or \"loihi8\" (one 8-bit weight per synapse)")
    if cfg.denoiser.token_input not in ("raw", "embed"):
        raise ConfigError(f"unknown denoiser.token_input '{cfg.denoiser.token_input}'; "
                          "choose raw or embed")

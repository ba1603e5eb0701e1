"""Checkpoints: one file with weights, optimizer, progress, config and provenance.

A file holds one `Checkpoint` record as a plain dict of tensors and built-in
types (so `torch.load(weights_only=True)` reads it), with a schema version:
older files are upgraded when read. Writes go to a temporary file in the same
folder and are renamed into place, so a kill mid-write never leaves a
truncated checkpoint behind.
"""
from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__, ema
from .atomic import atomic_path
from .config import WEIGHTS, Config, check
from .errors import SpikediffError
from .model import SpikingDiffusion, build_model
from .vqsvae import decodes

FORMAT = "spikediff-checkpoint/1"
# 2: the record below with its own "schema" field; 1: the same keys, unversioned.
SCHEMA = 2
STAGES = ("vq", "denoiser", "decoder")  # training stages, in order; "done" follows
WEIGHTS_DIR = Path(__file__).parent / "weights"
# The best MNIST model; it carries the sampling settings it was tuned with.
SHIPPED = WEIGHTS_DIR / "mnist.pt"


class CheckpointError(SpikediffError):
    pass


@dataclass
class Checkpoint:
    """What a run file holds. Weights and optimizer states are state dicts;
    the provenance fields are None where they do not apply."""
    config: dict                      # Config.to_dict()
    data: dict                        # name, channels, image_size, n_train, holdout, limit, source_files
    stage: str = "vq"                 # the stage being trained: vq, denoiser, decoder, or done
    epoch: int = 0                    # epochs finished in `stage`
    step: int = 0                     # optimizer steps over all stages
    history: dict = field(default_factory=lambda: {s: [] for s in STAGES})  # per stage, per epoch
    seconds: dict = field(default_factory=dict)  # wall time per stage
    vq: dict | None = None
    denoiser: dict | None = None
    denoiser_ema: dict | None = None  # the weight average (train.ema_decay > 0)
    optimizer: dict | None = None     # of the stage in progress; None in shipped files
    rng: torch.Tensor | None = None
    discriminator: dict | None = None  # the adversarial term's, during the VQ stages only
    code_version: str | None = None
    hardware: str | None = None
    denoiser_hardware: str | None = None  # where the denoiser of a decoder-stage run was trained
    vq_from: str | None = None        # --vq-from / --finetune: the run whose VQ-SVAE this took
    finetuned_from: dict | None = None  # --finetune: path, weights, denoiser epochs, seconds, hardware
    decoder_from: str | None = None   # --stage decoder: the run whose model this took
    earlier_decoder: dict | None = None  # decoder stages the taken-over decoder had had
    combined: dict | None = None      # `spikediff combine`: the two sources
    stopped_by_time_budget: dict | None = None
    sampling_note: str | None = None  # how the [diffusion] sampling settings were chosen
    world_size: int = 1               # training processes (torchrun) that wrote it; older files: 1
    schema: int = SCHEMA

    def to_file(self) -> dict:
        """The dict that is saved (shallow: the tensors are not copied)."""
        return {"format": FORMAT, **{f.name: getattr(self, f.name)
                                     for f in dataclasses.fields(self)}}

    @classmethod
    def from_file(cls, d: dict, where="the checkpoint") -> "Checkpoint":
        d = {k: v for k, v in d.items() if k != "format"}
        d.setdefault("schema", 1)
        if d["schema"] > SCHEMA:
            raise CheckpointError(f"{where} was written by a newer spikediff (schema "
                                  f"{d['schema']}, this one reads up to {SCHEMA}); upgrade")
        d["schema"] = SCHEMA  # 1 -> 2: the same fields, now versioned
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"{where} has fields this version does not know: "
                                  f"{', '.join(unknown)}")
        missing = [k for k in ("config", "data") if k not in d]
        if missing:
            raise CheckpointError(f"{where} lacks {', '.join(missing)}; it is not a complete "
                                  "spikediff checkpoint")
        return cls(**d)


def code_version() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{__version__}+{rev}" if rev else __version__


def atomic_save(ckpt: Checkpoint, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(ckpt.to_file(), tmp)


def resolve(path: str | Path | None) -> Path:
    """The given checkpoint, or the shipped MNIST one when none is given."""
    return Path(path) if path is not None else SHIPPED


def shipped(dataset: str) -> Path:
    """The shipped checkpoint of a data set: spikediff/weights/DATASET.pt."""
    return WEIGHTS_DIR / f"{dataset}.pt"


def pick(path: str | Path | None, dataset: str | None) -> Path:
    """What a tool's --checkpoint and --dataset name together: the given file
    (which must have been trained on --dataset, when both are given), else the
    shipped checkpoint of --dataset, else the shipped MNIST one."""
    if path is None:
        if dataset is None:
            return SHIPPED
        if not shipped(dataset).is_file():
            from .data import DATASETS
            have = ", ".join(sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt")
                                    if p.stem in DATASETS))
            raise CheckpointError(
                f"no checkpoint is shipped for {dataset} (shipped: {have}); train one "
                f"(spikediff train --dataset {dataset} --out RUN; docs/usage.md) and pass "
                "--checkpoint RUN/checkpoint.pt")
        return shipped(dataset)
    if dataset is not None:
        trained_on = load(path).data["name"]
        if trained_on != dataset:
            raise CheckpointError(f"{path} was trained on {trained_on}, not {dataset}: drop "
                                  f"--dataset, or pass --dataset {trained_on}")
    return Path(path)


def load(path: str | Path | None) -> Checkpoint:
    path = resolve(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: give the path to a .pt file written by "
                              "`spikediff train`")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), as a full disk or an interrupted copy "
                              "leaves a file; use another copy of it, or train again")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); it may be truncated or corrupt") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a spikediff checkpoint (expected format {FORMAT})")
    state = Checkpoint.from_file(ckpt, str(path))
    check_finite(state, str(path))
    return state


WEIGHT_FIELDS = ("vq", "denoiser", "denoiser_ema")


def check_finite(ckpt: Checkpoint, where="the checkpoint") -> None:
    """Refuses weights with NaN or inf (a diverged or damaged run): a model
    with them samples blank images without any other sign."""
    for name in WEIGHT_FIELDS:
        weights = getattr(ckpt, name)
        if not isinstance(weights, dict):
            continue
        for key, value in weights.items():
            if (torch.is_tensor(value) and value.is_floating_point()
                    and not bool(torch.isfinite(value).all())):
                bad = "NaN" if bool(torch.isnan(value).any()) else "inf"
                raise CheckpointError(f"{where} has non-finite weights ({bad} in {name}.{key}); "
                                      "the run diverged or the file is damaged: use an earlier "
                                      "checkpoint")


def load_weights(module: torch.nn.Module, weights: dict, what: str, where="the checkpoint") -> None:
    """module.load_state_dict(weights), with a mismatch (a config edited by hand
    or of another model) said in one line: the first tensor and both shapes."""
    expected = module.state_dict()
    for key, value in weights.items():
        if key in expected and torch.is_tensor(value) and value.shape != expected[key].shape:
            raise CheckpointError(
                f"{where}: {what}.{key} has shape {tuple(value.shape)} in the file but the "
                f"checkpoint's config builds {tuple(expected[key].shape)}; the config does not "
                "match the weights (edited by hand?): restore the config the run was trained with")
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        which = (f"the checkpoint's config builds {what}.{missing[0]}, which the file lacks"
                 if missing else f"the file has {what}.{unexpected[0]}, which the checkpoint's "
                 "config does not build")
        raise CheckpointError(f"{where}: {which} ({len(missing)} missing, {len(unexpected)} "
                              "unexpected tensors); the config does not match the weights")
    module.load_state_dict(weights)


def denoiser_training(ckpt: Checkpoint) -> tuple[str, float, str | None]:
    """(epochs, seconds, hardware) of the denoiser's training; a run fine-tuned
    from another counts that one's too: epochs "30+12", hardware "A, then B"."""
    n, sec = len(ckpt.history["denoiser"]), ckpt.seconds.get("denoiser", 0.0)
    # A decoder-stage run (--finetune CKPT --stage decoder) records where its
    # denoiser was trained: its own hardware trained only the decoder.
    hw, f = ckpt.denoiser_hardware or ckpt.hardware, ckpt.finetuned_from
    if not f:
        return str(n), sec, hw
    return (f"{f['denoiser_epochs']}+{n}", f["denoiser_seconds"] + sec,
            f"{f['hardware'] or 'unrecorded hardware'}, then {hw}")


def decoder_training(ckpt: Checkpoint) -> tuple[str, float]:
    """(epochs, seconds) of the decoder stages behind this model: a decoder stage
    run on a decoder-stage run counts the earlier one too, epochs "3+3"; "0":
    none."""
    n, sec = len(ckpt.history.get("decoder", [])), ckpt.seconds.get("decoder", 0.0)
    earlier = ckpt.earlier_decoder
    if not earlier:
        return str(n), sec
    if not n:  # a denoiser fine-tuned on a decoder-stage run: that decoder, as it was
        return earlier["epochs"], earlier["seconds"]
    return f"{earlier['epochs']}+{n}", earlier["seconds"] + sec


def combine(denoiser_path: str | Path, decoder_path: str | Path) -> Checkpoint:
    """One model from two runs on one VQ-SVAE: the denoiser (and its record) of
    the first, the VQ-SVAE with its decoder (and its decoder stages) of the
    second. The decoder stage never sees the denoiser, so a decoder trained on
    one run serves every denoiser trained on the same codes."""
    a, b = load(denoiser_path), load(decoder_path)
    if a.denoiser is None:
        raise CheckpointError(f"{resolve(denoiser_path)} holds no trained denoiser")
    if b.vq is None:
        raise CheckpointError(f"{resolve(decoder_path)} holds no trained VQ-SVAE")
    same = ("name", "channels", "image_size", "holdout")
    if any(a.data[k] != b.data[k] for k in same) or a.config["vq"] != b.config["vq"]:
        raise CheckpointError("the two checkpoints were trained on other data or VQ-SVAE settings; "
                              "combine runs built on one VQ-SVAE")
    for k, v in a.vq.items():
        if not decodes(k) and not (k in b.vq and torch.equal(v, b.vq[k])):
            raise CheckpointError(
                f"the two VQ-SVAEs encode images differently ({k} differs), so the denoiser of "
                f"{resolve(denoiser_path)} was trained on other codes than the decoder of "
                f"{resolve(decoder_path)} decodes; combine runs built on one VQ-SVAE "
                "(--vq-from, --finetune, --stage decoder)")
    # a decoder source that was itself combined passes on its own decoder's record
    bc = b.combined
    return dataclasses.replace(
        weights_only(a), vq=b.vq, stage="done", decoder_from=None,
        earlier_decoder=b.earlier_decoder, code_version=code_version(),
        combined={"denoiser": str(resolve(denoiser_path)), "decoder": str(resolve(decoder_path)),
                  "decoder_train": vq_train_settings(b),
                  "decoder_from": bc.get("decoder_from") if bc else b.decoder_from,
                  "decoder_hardware": bc.get("decoder_hardware") if bc else b.hardware},
        history={**a.history, "decoder": b.history.get("decoder", [])},
        seconds={**a.seconds, "decoder": b.seconds.get("decoder", 0.0)})


SAMPLING = ("temperature", "refine_steps", "refine_fraction", "refine_temperature")


def sampling_settings(ckpt: Checkpoint) -> dict:
    """The sampling settings every command uses unless flags override them:
    the [diffusion] fields of the checkpoint's config."""
    d = Config.from_dict(ckpt.config).diffusion  # older files lack the newer fields
    return {k: getattr(d, k) for k in SAMPLING}


def with_sampling(ckpt: Checkpoint, settings: dict, note: str) -> Checkpoint:
    """A copy of `ckpt` whose default sampling settings are `settings` (the
    [diffusion] fields in SAMPLING), with `note` saying how they were chosen."""
    unknown = set(settings) - set(SAMPLING)
    if unknown:
        raise ValueError(f"not sampling settings: {sorted(unknown)}")
    config = {**ckpt.config, "diffusion": {**ckpt.config["diffusion"], **settings}}
    check(Config.from_dict(config))
    return dataclasses.replace(ckpt, config=config, sampling_note=note)


def weights_only(ckpt: Checkpoint) -> Checkpoint:
    """What a shipped file carries: the run's weights and records without the state
    that only continues it exactly (optimizer, discriminator, random state)."""
    return dataclasses.replace(ckpt, optimizer=None, rng=None, discriminator=None)


def vq_train_settings(ckpt: Checkpoint) -> dict:
    """The [train] settings the VQ-SVAE, decoder included, last trained under: a
    combined model's are its decoder source's."""
    c = ckpt.combined
    return c["decoder_train"] if c else ckpt.config["train"]


def weights_hash(*modules: torch.nn.Module) -> str:
    """A short hash of modules' weights and buffers: the same for the same
    trained values, whichever file or export they came through."""
    h = hashlib.sha256()
    for module in modules:
        for name, value in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def model_from(ckpt: Checkpoint, weights: str = "ema", fold: bool = True,
               where: str = "the checkpoint") -> SpikingDiffusion:
    """The model for inference; its denoiser has the averaged weights where the
    run kept an average (train.ema_decay > 0) unless weights="raw" (the last
    step's), and is in its folded, spike-fed form (fold.py) unless fold=False
    (the trained, factored form)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    cfg = Config.from_dict(ckpt.config)
    data = ckpt.data
    model = build_model(cfg, data["channels"], data["image_size"])
    load_weights(model.vq, ckpt.vq, "vq", where)
    if weights == "ema" and ckpt.denoiser_ema is not None:
        load_weights(model.denoiser, ema.module_weights(ckpt.denoiser_ema), "denoiser_ema", where)
    elif ckpt.denoiser is not None:
        load_weights(model.denoiser, ckpt.denoiser, "denoiser", where)
    return model.inference() if fold else model.eval()


def load_model(path: str | Path | None, *, need_denoiser: bool = True,
               weights: str = "ema", fold: bool = True) -> SpikingDiffusion:
    ckpt = load(path)
    if need_denoiser and ckpt.denoiser is None:
        raise CheckpointError(f"{resolve(path)} holds only a trained VQ-SVAE (stage 1); "
                              "train the denoiser first: spikediff train --stage denoiser --resume")
    return model_from(ckpt, weights, fold, str(resolve(path)))

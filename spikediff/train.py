"""Two-stage training: VQ-SVAE (stage 1), then the denoiser on frozen codes.

An optional third stage (train.epochs_decoder > 0, or `--finetune CKPT
--stage decoder`) trains the VQ-SVAE's decoding side further on the same
frozen codes, so the denoiser's data, and the denoiser, stay valid.

Everything needed to continue lives in RUN_DIR/checkpoint.pt, rewritten
atomically after every epoch: weights, optimizer, RNG state, epoch counters,
loss history, config and data provenance. Each epoch draws its shuffling from
its own seeded generator, so a resumed run replays exactly what an
uninterrupted one would have done.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import sys
import time
import tomllib
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint, distributed, ema, sparsity
from .checkpoint import STAGES, Checkpoint
from .adversarial import Adversary
from .atomic import remove_stray_temps
from .config import Config, check
from .data import data_digest, load_images, source_hashes
from .diffusion import diffusion_loss
from .errors import SpikediffError
from .model import SpikingDiffusion, build_model
from .plots import save_grid, save_loss_plot
from .progress import bar as progress_bar

ORDER = STAGES + ("done",)  # a checkpoint's "stage" moves along this


def _epochs(cfg: Config, stage: str) -> int:
    return getattr(cfg.train, f"epochs_{stage}")


def _last_stage(cfg: Config) -> str:
    return "decoder" if cfg.train.epochs_decoder else "denoiser"


def _optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the base rate at `step` of a stage's `total_steps`."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))
    return 1.0


def _batches(n: int, batch_size: int, seed: int, stage: str, epoch: int):
    g = torch.Generator().manual_seed(seed * 1_000_003 + STAGES.index(stage) * 10_007 + epoch)
    order = torch.randperm(n, generator=g)
    for i in range(0, n - batch_size + 1, batch_size):  # drop the ragged tail: BN needs it
        yield order[i:i + batch_size]


class Trainer:
    def __init__(self, model: SpikingDiffusion, state: Checkpoint, images: torch.Tensor,
                 out_dir: Path, device: str, progress: bool = True, deadline: float | None = None):
        self.model, self.state, self.out_dir = model, state, out_dir
        self.deadline = deadline  # time.monotonic() after which the denoiser stage stops
        self.images, self.device, self.progress = images, device, progress
        self.cfg = model.config
        self.model.to(device)
        # Under torchrun, training-mode batch norm sees the global batch, as one process does.
        distributed.sync_batchnorm(self.model.vq)
        distributed.sync_batchnorm(self.model.denoiser)
        if not distributed.is_main():  # the run's code counts are the sum over ranks: those
            self.model.vq.codebook.usage.zero_()  # loaded are counted once, on rank 0
        self.ema = None  # the denoiser's weight average, when train.ema_decay > 0
        self.adversary = None  # the VQ stage's discriminator, when train.adversarial_weight > 0

    def save(self, opt: torch.optim.Optimizer | None) -> None:
        """Called on every rank (the code usage is summed over them); rank 0 writes."""
        s = self.state
        s.vq = self.model.vq.state_dict()
        if distributed.world() > 1:  # the codes the ranks' slices used, all of them
            s.vq["codebook.usage"] = distributed.sum_(s.vq["codebook.usage"])
        if not distributed.is_main():
            return
        s.denoiser = self.model.denoiser.state_dict() if s.stage != "vq" else None
        s.denoiser_ema = self.ema.state_dict() if self.ema is not None else s.denoiser_ema
        s.discriminator = self.adversary.state_dict() if self.adversary is not None else None
        s.optimizer = opt.state_dict() if opt is not None else None
        s.rng = torch.get_rng_state()
        s.code_version = checkpoint.code_version()
        s.hardware = describe_hardware(self.device)
        s.world_size = distributed.world()
        checkpoint.atomic_save(s, self.out_dir / "checkpoint.pt")
        save_loss_plot(s.history, self.out_dir / "losses.png")

    def run(self, stages: tuple[str, ...]) -> None:
        for stage in STAGES:
            if stage not in stages or not _epochs(self.cfg, stage):
                continue
            if self.state.stage != stage:
                if ORDER.index(self.state.stage) > ORDER.index(stage):
                    continue  # this stage finished in an earlier run
                self.state.stage, self.state.epoch, self.state.optimizer = stage, 0, None
            self._run_stage(stage)

    def _run_stage(self, stage: str) -> None:
        cfg, model, dev = self.cfg, self.model, self.device
        if stage == "vq":
            net = model.vq
            data = self.images
            net.data_variance.fill_((data.float() / 127.5 - 1).var().item())
            bs = cfg.train.batch_size
            self.adversary = self._adversary(cfg.train.adversarial_start)
        elif stage == "decoder":
            net = model.vq.decoding_side()
            model.vq.eval()  # the encoder and codebook stay as they are
            data = self._tokens()
            bs = cfg.train.batch_size
            self.adversary = self._adversary(0)  # on from the first step: the decoder is trained
        else:
            net = model.denoiser
            self.adversary = None  # a training aid for the VQ-SVAE only: not kept past it
            model.vq.eval()
            data = self._tokens()
            bs = cfg.train.denoiser_batch_size or cfg.train.batch_size
            if cfg.train.ema_decay:
                self.ema = ema.averaged(net, cfg.train.ema_decay, self.state.denoiser_ema)
            self.firing_targets = sparsity.targets_for(cfg.train.firing_target, len(net.layers))
        opt = _optimizer(cfg, net.parameters())
        if self.state.optimizer:
            opt.load_state_dict(self.state.optimizer)
        if self.state.rng is not None:
            torch.set_rng_state(self.state.rng)
        total = _epochs(cfg, stage)
        data = data.to(dev)  # the data sets are small: keep them beside the model
        if len(data) < bs:
            raise SpikediffError(f"{len(data)} training images is fewer than one batch ({bs})")
        per_epoch = len(data) // bs
        main = distributed.is_main()
        for epoch in range(self.state.epoch, total):
            net.train()
            t0, seen, sums, counts = time.perf_counter(), 0, {}, {}
            batches = list(_batches(len(data), bs, cfg.train.seed, stage, epoch))
            bar = progress_bar(batches, desc=f"{stage} epoch {epoch + 1}/{total}",
                               show=self.progress and main,
                               leave=False, dynamic_ncols=True)
            for i, idx in enumerate(bar):
                # Set from the epoch and batch index alone, so a resumed run follows the same curve.
                lr = cfg.train.lr * lr_factor(cfg.train.lr_schedule, epoch * per_epoch + i,
                                               total * per_epoch)
                for group in opt.param_groups:
                    group["lr"] = lr
                idx = distributed.shard(idx)  # this rank's slice of the global batch
                out = self._step(stage, data[idx].to(dev), idx)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                distributed.average_gradients(net.parameters())  # the global batch's gradient
                opt.step()
                if self.ema is not None and stage == "denoiser":  # the denoiser's average only
                    self.ema.update_parameters(net)
                if self.adversary is not None:  # set in the VQ-SVAE's stages only
                    out |= self.adversary.update()
                self.state.step += 1
                seen += len(idx)
                for k, v in out.items():
                    if v.dim() == 0:  # per key: some terms start part-way through an epoch
                        sums[k] = sums.get(k, 0.0) + v.item() * len(idx)
                        counts[k] = counts.get(k, 0) + len(idx)
                rate = seen / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{out['loss'].item():.4f}", img_s=f"{rate:.0f}")
            wall = time.perf_counter() - t0
            if distributed.world() > 1:  # the global batch's means and image count
                sums, counts = _summed(sums, dev), _summed(counts, dev)
                seen *= distributed.world()
            record = {k: v / counts[k] for k, v in sums.items()} | {
                "epoch": epoch + 1, "lr": lr, "seconds": wall, "images_per_s": seen / wall}
            self.state.history.setdefault(stage, []).append(record)
            self.state.seconds[stage] = self.state.seconds.get(stage, 0.0) + wall
            self.state.epoch = epoch + 1
            if main:
                tqdm.write(f"{stage} epoch {epoch + 1}/{total}: " + ", ".join(
                        f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
                self._snapshot(stage, epoch + 1)
            # rank 0's clock decides, so that every rank stops after the same epoch
            past = distributed.from_main(bool(self.deadline and time.monotonic() > self.deadline))
            if stage == "denoiser" and past:
                # A time budget ends the stage here; the checkpoint says so.
                self.cfg.train.epochs_denoiser = epoch + 1
                self.state.config["train"]["epochs_denoiser"] = epoch + 1
                self.state.stopped_by_time_budget = {"after_epoch": epoch + 1, "of": total}
                if main:
                    tqdm.write(f"time budget reached: denoiser stops after epoch "
                               f"{epoch + 1}/{total}")
                self.save(opt)
                break
            self.save(opt)
        if stage == _last_stage(cfg):
            self.state.stage = "done"
            self.save(opt)  # the optimizer stays, so `--resume --epochs-... N` continues exactly

    def _adversary(self, start: int) -> Adversary | None:
        """The VQ-SVAE stages' discriminator (resumed from the checkpoint), if the config has one."""
        t = self.cfg.train
        if not t.adversarial_weight:
            return None
        return Adversary(self.model.vq.readout.out_channels, t.adversarial_weight, start, t.lr,
                         t.seed, self.state.discriminator, self.device)

    def _step(self, stage: str, batch: torch.Tensor, idx: torch.Tensor) -> dict:
        if stage == "decoder":  # batch: code grids; the images they encode are the targets
            x = self.images[idx].to(self.device).float() / 255
            out = self.model.vq.decode_with_loss(batch, x)
            if self.adversary is not None:
                out = self.adversary.generator_terms(out, x * 2 - 1, self.model.vq.readout.weight,
                                                     self.state.step)
            return {k: v for k, v in out.items() if k != "output"}
        if stage == "vq":
            x = batch.float() / 255
            out = self.model.vq(x)
            every = self.cfg.vq.restart_every
            if every and self.state.step % every == every - 1:
                # Under torchrun: the codes no rank used, moved onto the global batch's features.
                codebook = self.model.vq.codebook
                codebook.usage.copy_(distributed.sum_(codebook.usage))
                codebook.restart_dead(distributed.cat(out["features"]))
            if self.adversary is not None:
                out = self.adversary.generator_terms(out, x * 2 - 1, self.model.vq.readout.weight,
                                                     self.state.step)
            return {k: v for k, v in out.items()
                    if k not in ("images", "codes", "features", "output")}
        den, t = self.model.denoiser, self.cfg.train
        rates = []

        def denoise(tokens, steps):  # the denoiser's forward, keeping its layers' rates
            spikes = den.spikes(tokens, steps)
            rates.append(sparsity.firing_rates(spikes))
            return den.readout(spikes)

        out = diffusion_loss(denoise, batch, self.model.diffusion_steps, den.mask_id,
                             shard=(distributed.rank(), distributed.world()))
        out["firing_rate"] = rates[0].mean().detach()  # recorded whether penalised or not
        for i, r in enumerate(rates[0].detach()):
            out[f"firing_rate_{i}"] = r
        if not t.firing_penalty:
            return out
        # the global batch's rates: the penalty is not linear in them (a target above 0)
        penalty = sparsity.firing_penalty(distributed.global_mean(rates[0]), t.firing_penalty,
                                          self.firing_targets)
        out["diffusion_loss"] = out["loss"].detach()
        out["loss"] = out["loss"] + penalty
        out["firing_penalty"] = penalty.detach()
        return out

    def _tokens(self) -> torch.Tensor:
        return encode_codes(self.model.vq, self.images, self.device, self.progress)

    @torch.no_grad()
    def _snapshot(self, stage: str, epoch: int) -> None:
        """A PNG per epoch: reconstructions (VQ-SVAE stages) or fresh samples (denoiser)."""
        if stage != "denoiser":
            vq = self.model.vq.eval()
            x = self.images[:32].to(self.device).float() / 255
            recon = vq.decode(vq.encode(x))
            grid = torch.cat([x.view(4, 8, *x.shape[1:]), recon.view(4, 8, *x.shape[1:])], 1)
            name = "recon" if stage == "vq" else "recon-decoder"
            save_grid(grid.flatten(0, 1), self.out_dir / f"{name}_e{epoch:03d}.png", nrow=8)
        else:
            model = self.model
            if self.ema is not None:  # show what sampling from the checkpoint will give
                model = dataclasses.replace(model, denoiser=self.ema.module)
            model.eval()
            g = torch.Generator().manual_seed(self.cfg.train.seed)
            images, _ = model.generate(64, generator=g, device=self.device)
            save_grid(images, self.out_dir / f"samples_e{epoch:03d}.png", nrow=8)


def _summed(values: dict, device) -> dict:
    """A dict of numbers summed over ranks (the same keys on every rank); the
    sum runs on `device`, as NCCL sums GPU tensors only."""
    keys = sorted(values)  # one order on every rank
    total = distributed.sum_(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                                          device=device))
    summed = dict(zip(keys, total.tolist()))
    return {k: summed[k] for k in values}


@torch.no_grad()
def encode_codes(vq, images_u8: torch.Tensor, device, progress: bool = False) -> torch.Tensor:
    """Code grids [N, h, w] (on the CPU) of uint8 images: the denoiser's data."""
    vq.eval()
    chunks = []
    for i in progress_bar(range(0, len(images_u8), 500), desc="encoding codes", show=progress,
                          leave=False):
        chunks.append(vq.encode(images_u8[i:i + 500].to(device).float() / 255).cpu())
    return torch.cat(chunks)


def _check_resume_flags(state: Checkpoint, flags: dict, extend: dict[str, int]) -> None:
    """--resume with the run's other flags repeated (the command as first typed) is
    fine; a flag that would change what the run is gets refused instead of being
    ignored. Epoch counts in a repeated --config extend the run like --epochs-*."""
    from .config import load_config
    cfg, d = state.config, state.data
    recorded = {"dataset": d["name"], "preset": cfg.get("preset"), "limit": d.get("limit"),
                "image_size": d["image_size"], "grayscale": d["channels"] == 1}
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if key == "grayscale" and recorded["grayscale"]:
            continue
        if key in recorded and value != recorded[key]:
            was = "not given" if recorded[key] in (None, False) else recorded[key]
            raise SpikediffError(f"{flag} {value if value is not True else ''}".rstrip()
                                 + f" cannot change when resuming: this run has {was}; drop the "
                                 "flag, or start a new run")
    for key in ("vq_from", "finetune"):
        if key in flags:
            took = (state.finetuned_from or {}).get("path") or state.decoder_from or state.vq_from
            if took is None or Path(took).resolve() != Path(flags[key]).resolve():
                raise SpikediffError(f"--{key.replace('_', '-')} {flags[key]}: this run was not "
                                     f"built on it ({took or 'it started from scratch'}); drop "
                                     "the flag to resume it")
    if "config" in flags:
        mine = Config.from_dict(cfg)
        asked = load_config(cfg.get("preset") or "default", flags["config"])  # validates the file
        asked_d, mine_d = asked.to_dict(), mine.to_dict()
        file_values = tomllib.loads(Path(flags["config"]).read_text())
        for section, values in file_values.items():
            for key in values:
                if section == "train" and key.startswith("epochs_"):
                    if asked_d["train"][key] != mine_d["train"][key]:
                        extend.setdefault(key, asked_d["train"][key])
                    continue
                if asked_d[section][key] != mine_d[section][key]:
                    raise SpikediffError(
                        f"--config {flags['config']} sets {section}.{key} = "
                        f"{asked_d[section][key]!r}, but this run has {mine_d[section][key]!r}; "
                        "a resumed run keeps its config: drop --config, or start a new run")


def _extend(state: Checkpoint, extend: dict[str, int]) -> None:
    """Raises epoch counts of a resumed run; a finished run goes back to its last stage
    (the decoder stage, which starts afresh, where --epochs-decoder adds one)."""
    hist, train_cfg = state.history, state.config["train"]
    if extend and train_cfg.get("lr_schedule", "constant") != "constant":
        raise SpikediffError(f"this run's learning rate follows a {train_cfg['lr_schedule']} "
                             "schedule fixed by its epoch counts; training it further would not "
                             "match any fresh run: start a new run with more epochs")
    for key, n in extend.items():
        stage = key.removeprefix("epochs_")
        flag = "--" + key.replace("_", "-")
        if n < len(hist.get(stage, [])):
            raise SpikediffError(f"{flag} {n} is fewer than the {len(hist[stage])} {stage} epochs "
                                 "this run has already trained")
        if stage == "vq" and state.stage != "vq" and n > len(hist["vq"]):
            raise SpikediffError(f"{flag}: this run's VQ stage is over and the denoiser was trained "
                                 "on its codes; start a new run to train the VQ-SVAE longer")
        if stage == "denoiser" and hist.get("decoder") and n > len(hist["denoiser"]):
            raise SpikediffError(f"{flag}: this run's decoder stage came after its denoiser; "
                                 "start a new run with --finetune to train the denoiser further")
        train_cfg[key] = n
    if state.stage == "done":
        stage = "decoder" if train_cfg.get("epochs_decoder") else "denoiser"
        done = len(hist.get(stage, []))
        if train_cfg[f"epochs_{stage}"] <= done:
            raise SpikediffError(f"this run has finished ({done} {stage} epochs); pass "
                                 f"--epochs-{stage} N with N > {done} to train it further")
        if done == 0:  # a decoder stage added to a finished run: its own new optimizer
            state.optimizer = None
        elif state.optimizer is None:
            raise SpikediffError("this finished checkpoint has no optimizer state (shipped weights "
                                 "drop it), so it cannot be continued exactly; start a new run on it "
                                 "with --finetune CKPT")
        state.stage, state.epoch, state.stopped_by_time_budget = stage, done, None


def _take_over(path, flag: str, dataset: str, need_denoiser: bool) -> Checkpoint:
    """The checkpoint a new run builds on (--vq-from, --finetune), checked."""
    if not Path(path).is_file():  # load()'s own message speaks of --checkpoint
        trained = "denoiser" if need_denoiser else "VQ-SVAE stage"
        raise SpikediffError(f"{flag}: no checkpoint at {path}; give a checkpoint.pt "
                             f"whose {trained} is trained")
    source = checkpoint.load(path)
    d = source.data
    unfinished = source.stage == "vq" and source.epoch < source.config["train"]["epochs_vq"]
    if unfinished or source.vq is None:
        raise SpikediffError(f"{path} holds no finished VQ-SVAE (its stage 1 is still "
                             "running); finish it first with --resume --stage vq")
    if need_denoiser and source.denoiser is None:
        raise SpikediffError(f"{flag}: {path} holds no trained denoiser to start from; "
                             "use --vq-from to train a new one on its VQ-SVAE")
    if d["name"] != dataset:
        raise SpikediffError(f"the model in {path} was trained on {d['name']}, not "
                             f"{dataset}; pass --dataset {d['name']}")
    return source


def _take_lock(lock: RunLock, resume: bool, ckpt_path: Path) -> None:
    if not lock.held:
        lock.acquire()
        if not resume and ckpt_path.exists():  # another run got there first
            raise SpikediffError(f"{ckpt_path} exists: pass --resume to continue that run, "
                                 "or choose another --out")


def _start_from_denoiser(state: Checkpoint, source: Checkpoint, path) -> None:
    """A fine-tuning run's starting weights, and the record of where they came from."""
    averaged = source.denoiser_ema is not None
    state.denoiser = (ema.module_weights(source.denoiser_ema) if averaged
                         else source.denoiser)
    epochs, seconds, hardware = checkpoint.denoiser_training(source)  # all of its ancestry's
    state.finetuned_from = {"path": str(checkpoint.resolve(path)),
                               "weights": "ema" if averaged else "raw", "denoiser_epochs": epochs,
                               "denoiser_seconds": seconds, "hardware": hardware}
    _record_earlier_decoder(state, source)  # its VQ-SVAE, decoder included, is kept


def _take_denoiser(state: Checkpoint, source: Checkpoint, path) -> None:
    """A decoder-stage run keeps the source's denoiser as it is, with its record."""
    state.stage, state.decoder_from = "decoder", str(checkpoint.resolve(path))
    state.denoiser, state.denoiser_ema = source.denoiser, source.denoiser_ema
    state.denoiser_hardware = source.denoiser_hardware or source.hardware
    state.history["denoiser"] = source.history["denoiser"]
    state.seconds["denoiser"] = source.seconds.get("denoiser", 0.0)
    if source.finetuned_from:
        state.finetuned_from = source.finetuned_from
    _record_earlier_decoder(state, source)


def _record_earlier_decoder(state: Checkpoint, source: Checkpoint) -> None:
    """Where the taken-over decoder had decoder stages already: count them."""
    epochs, seconds = checkpoint.decoder_training(source)
    if epochs != "0":
        state.earlier_decoder = {"epochs": epochs, "seconds": seconds}


LOCK_NAME = "train.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OverflowError:
        return False
    return True


class RunLock:
    """RUN_DIR/train.lock while a run writes to RUN_DIR: {"pid", "host"} of
    its owner. A second run into the folder is refused; the lock of a process
    that is gone (on this host) is taken over, with a note on stderr."""

    def __init__(self, out_dir: Path):
        self.path, self.held = Path(out_dir) / LOCK_NAME, False
        self.me = {"pid": os.getpid(), "host": socket.gethostname()}

    def acquire(self) -> None:
        for _ in range(2):  # a second try after clearing a stale lock
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._clear_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            self.held = True
            return
        self._refuse(self._owner())  # another run took it in between

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None

    def _refuse(self, owner: dict | None):
        who = f"process {owner['pid']} on {owner.get('host', '?')}" if owner else "another process"
        raise SpikediffError(f"{self.path.parent} is in use by another training run ({who} holds "
                             f"{self.path}); wait for it to end, or choose another --out (if "
                             "that run is gone, delete the lock file)")

    def _clear_stale(self) -> None:
        owner = self._owner()
        if owner == {}:
            return  # released meanwhile: try again
        if owner is not None:
            if owner.get("host") != self.me["host"] or _alive(owner["pid"]):
                self._refuse(owner)
            what = f"process {owner['pid']}, which is no longer running"
        else:
            if time.time() - self.path.stat().st_mtime < 10:  # may be being written now
                self._refuse(None)
            what = "an unreadable lock"
        print(f"note: taking over {self.path} left by {what}", file=sys.stderr)
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held and self._owner() == self.me:
            self.path.unlink(missing_ok=True)
        self.held = False


def _check_data(state: Checkpoint, hashes: list[str], n_train: int, allow_change: bool) -> None:
    """--resume: the data must be what the checkpoint was trained on (its
    recorded sha256); a checkpoint without one is resumed with a warning."""
    d = state.data
    recorded = d.get("source_sha256")
    if recorded is None:
        changed = None
        if d.get("n_train") is not None and d["n_train"] != n_train:
            changed = f"it had {d['n_train']} training images, the data now gives {n_train}"
        else:
            print("warning: this checkpoint records no hash of its training data (written by an "
                  "older spikediff), so the data could not be checked; its hash is recorded now",
                  file=sys.stderr)
    elif recorded == data_digest(hashes):
        return
    else:
        old, new = d.get("source_files_sha256"), hashes
        files = d.get("source_files") or []
        if old is not None and len(old) != len(new):
            changed = f"it was trained on {len(old)} files, the data now has {len(new)}"
        elif old is not None:
            i = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
            name = Path(files[i]).name if i < len(files) else f"file {i + 1}"
            changed = f"{name} changed (sha256 {old[i][:12]} recorded, {new[i][:12]} now)"
        else:
            changed = (f"its {len(files) or len(new)} files changed (sha256 {recorded[:12]} "
                       f"recorded, {data_digest(new)[:12]} now)")
    if changed is None:
        pass
    elif not allow_change:
        raise SpikediffError(f"the training data differs from this run's: {changed}; resume on "
                             "the original data, pass --allow-data-change to continue on this "
                             "data anyway, or start a new run")
    else:
        print(f"warning: continuing on changed training data ({changed}); the checkpoint "
              "records the change", file=sys.stderr)
        d.setdefault("changes", []).append({"stage": state.stage, "epoch": state.epoch,
                                            "step": state.step, "was": recorded,
                                            "n_train_was": d.get("n_train")})
        d["n_train"] = n_train
    _record_hashes(d, hashes)


def _record_hashes(data: dict, hashes: list[str]) -> None:
    data["source_sha256"] = data_digest(hashes)
    if len(hashes) <= 64:  # to say which file changed; a folder of images keeps only the digest
        data["source_files_sha256"] = hashes
    else:
        data.pop("source_files_sha256", None)


def _check_batches(cfg: Config, stages, n: int, limit: int | None) -> None:
    """Refuses a data set smaller than one batch before anything is written."""
    t = cfg.train
    for stage in STAGES:
        if stage not in stages or not _epochs(cfg, stage):
            continue
        denoiser = stage == "denoiser" and t.denoiser_batch_size
        bs = t.denoiser_batch_size if denoiser else t.batch_size
        if n < bs:
            how = (f"raise --limit (now {limit})" if limit and limit < bs else
                   "add images to the data set")
            flag = "train.denoiser_batch_size in a --config" if denoiser else "--batch-size"
            raise SpikediffError(f"{n} training images is fewer than one {stage} batch ({bs}): "
                                 f"{how}, or pass a smaller {flag}")
        if bs % distributed.world():  # the global batch is split evenly, as one process's
            raise SpikediffError(f"the {stage} batch size {bs} does not split evenly over "
                                 f"{distributed.world()} processes: choose a multiple of "
                                 f"{distributed.world()} ({flag})")


def describe_hardware(device: str) -> str:
    if str(device).startswith("cuda"):
        one = torch.cuda.get_device_name(torch.device(device))
    else:
        n = torch.get_num_threads()
        one = f"CPU, {os.cpu_count()} cores, {n} torch thread{'s' if n > 1 else ''}"
    w = distributed.world()
    return one if w == 1 else f"{w} processes (torchrun), rank 0 on: {one}"


def new_state(cfg: Config, data_info: dict) -> Checkpoint:
    return Checkpoint(config=cfg.to_dict(), data=data_info)


def train(cfg: Config | None, dataset: str, data_root, out_dir, *, stages=STAGES, device="cpu",
          resume=False, limit: int | None = None, image_size=None, rgb=None, download=False,
          folder=None, progress=True, time_budget_min: float | None = None,
          extend: dict[str, int] | None = None, vq_from=None, finetune=None, resume_flags=None,
          allow_data_change: bool = False, denoiser_T: int | None = None) -> Path:
    """Trains the given stages into out_dir. With resume, `extend` ({"epochs_vq" or
    "epochs_denoiser": n}) raises a run's epoch counts to train it further.
    With vq_from (a checkpoint path), a new run starts at the denoiser stage on
    that checkpoint's VQ-SVAE, its data settings and holdout. With finetune (a
    checkpoint path), the same, and the denoiser starts from that checkpoint's
    denoiser (its average where it kept one) with a fresh optimizer; with
    finetune and stages=("decoder",), the whole model is taken over as it is
    and only the decoder stage runs. denoiser_T (with finetune) trains the
    taken-over denoiser on at that many time steps. A resumed run's data must be the data
    the checkpoint records (by sha256) unless allow_data_change.

    RUN_DIR/train.lock keeps a second run out of out_dir while this one writes
    there; everything that can be checked is checked before the folder is made."""
    out_dir = Path(out_dir)
    lock = RunLock(out_dir)  # held by rank 0 for all ranks under torchrun
    if distributed.from_main(out_dir.is_dir()):  # rank 0's view: it may make the folder soon
        distributed.on_main(lock.acquire)
    try:
        return _train(cfg, dataset, data_root, out_dir, lock, stages=stages, device=device,
                      resume=resume, limit=limit, image_size=image_size, rgb=rgb,
                      download=download, folder=folder, progress=progress,
                      time_budget_min=time_budget_min, extend=extend, vq_from=vq_from,
                      finetune=finetune, allow_data_change=allow_data_change,
                      resume_flags=resume_flags, denoiser_T=denoiser_T)
    finally:
        lock.release()


def _train(cfg, dataset, data_root, out_dir: Path, lock: RunLock, *, stages, device, resume,
           limit, image_size, rgb, download, folder, progress, time_budget_min, extend, vq_from,
           finetune, allow_data_change, resume_flags, denoiser_T=None) -> Path:
    deadline = time.monotonic() + 60 * time_budget_min if time_budget_min else None
    ckpt_path = out_dir / "checkpoint.pt"
    if resume:
        state = checkpoint.load(ckpt_path)
        extend = dict(extend or {})
        _check_resume_flags(state, resume_flags or {}, extend)
        _extend(state, extend)
        cfg = Config.from_dict(state.config)
        d = state.data
        dataset, limit = d["name"], d.get("limit")
        image_size, rgb = d["image_size"], d["channels"] == 3
    elif ckpt_path.exists():
        raise SpikediffError(f"{ckpt_path} exists: pass --resume to continue that run, "
                             "or choose another --out")
    source = None
    base = finetune if finetune is not None else vq_from  # the run this one builds on
    if base is not None and not resume:
        flag = "--finetune" if finetune is not None else "--vq-from"
        source = _take_over(base, flag, dataset, need_denoiser=finetune is not None)
        d, src_cfg = source.data, Config.from_dict(source.config)
        cfg.vq = src_cfg.vq
        decoder_only = finetune is not None and tuple(stages) == ("decoder",)
        if decoder_only:
            if not cfg.train.epochs_decoder:
                raise SpikediffError("--stage decoder trains for train.epochs_decoder epochs, "
                                     "which is 0: pass --epochs-decoder N")
            cfg.denoiser, cfg.diffusion = src_cfg.denoiser, src_cfg.diffusion
            cfg.train.epochs_denoiser = len(source.history["denoiser"])
            cfg.train.ema_decay = src_cfg.train.ema_decay
        elif finetune is not None:  # the same network; only how it trains ([train]) may change
            cfg.denoiser, cfg.diffusion = src_cfg.denoiser, src_cfg.diffusion
            if denoiser_T is not None:  # ... and at how many time steps it runs
                cfg.denoiser.T = denoiser_T
        cfg.train.epochs_vq = len(source.history["vq"])
        cfg.train.holdout = d["holdout"]  # the same images stay unseen by both stages
        image_size, rgb = d["image_size"], d["channels"] == 3
        stages = ("decoder",) if decoder_only else ("denoiser",)
        check(cfg)  # e.g. firing_target against the taken-over denoiser's layers
    torch.manual_seed(cfg.train.seed)
    imgs = load_images(dataset, data_root, "train", image_size=image_size, rgb=rgb,
                       download=download, folder=folder)
    images = imgs.images
    holdout = cfg.train.holdout if len(images) > cfg.train.holdout * 2 else 0
    images = images[:len(images) - holdout]
    if limit:
        images = images[:limit]
    hashes = source_hashes(imgs.source_files)
    if resume:
        _check_data(state, hashes, len(images), allow_data_change)
    else:
        info = {"name": dataset, "channels": images.shape[1], "image_size": images.shape[-1],
                "n_train": len(images), "holdout": holdout, "limit": limit,
                "source_files": [str(p) for p in imgs.source_files]}
        _record_hashes(info, hashes)
        state = new_state(cfg, info)
        if source is not None:
            state.stage, state.vq = "denoiser", source.vq
            state.vq_from = str(checkpoint.resolve(base))
            state.history["vq"] = source.history["vq"]
            state.seconds["vq"] = source.seconds.get("vq", 0.0)
            if stages == ("decoder",):
                _take_denoiser(state, source, base)
            elif finetune is not None:
                _start_from_denoiser(state, source, base)
    _check_batches(cfg, stages, len(images), limit)
    model = build_model(cfg, images.shape[1], images.shape[-1])
    where = str(ckpt_path) if resume else str(checkpoint.resolve(base))
    if state.vq is not None:
        checkpoint.load_weights(model.vq, state.vq, "vq", where)
    if state.denoiser is not None:
        checkpoint.load_weights(model.denoiser, state.denoiser, "denoiser", where)
    out_dir.mkdir(parents=True, exist_ok=True)
    distributed.on_main(lambda: _take_lock(lock, resume, ckpt_path))
    if resume and state.world_size != distributed.world() and distributed.is_main():
        bs = cfg.train.batch_size
        print(f"note: resuming a run of {state.world_size} process"
              f"{'es' if state.world_size > 1 else ''} on {distributed.world()}: the same global "
              f"batches (batch size {bs}, {bs // distributed.world()} per process), learning "
              "rates and random draws; the weights match an uninterrupted run's up to float "
              "rounding, not bit for bit", file=sys.stderr)
    stray = remove_stray_temps(out_dir) if distributed.is_main() else []
    if stray:
        print(f"note: removed {len(stray)} temporary file{'s' if len(stray) > 1 else ''} a killed "
              f"write left in {out_dir} ({', '.join(p.name for p in stray[:3])})", file=sys.stderr)
    Trainer(model, state, images, out_dir, device, progress, deadline).run(tuple(stages))
    return ckpt_path

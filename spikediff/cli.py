"""`spikediff`: train, sample and inspect Spiking-Diffusion models."""
from __future__ import annotations

import argparse
from pathlib import Path

from .cliutil import (ArgumentParser, add_checkpoint_args, add_refine_args, add_weights_arg,
                      at_least, check_outputs, count, count0, handle_errors, nonneg,
                      pick_checkpoint, pick_device, positive, rates, refine_from_args,
                      refine_overrides, refine_settings, seed, temperatures)
from .errors import SpikediffError


def _add_data_args(p: argparse.ArgumentParser, dataset_default: str | None = "mnist") -> None:
    from .data import DATASETS
    p.add_argument("--dataset", choices=[*DATASETS, "folder"], default=dataset_default,
                   help="(default: mnist)")
    p.add_argument("--data-root", help="folder holding the data set "
                   "(default: $SPIKEDIFF_DATA_ROOT)")
    p.add_argument("--folder", help="with --dataset folder: an image folder tree")
    p.add_argument("--image-size", type=count, help="resize images (CIFAR-10: 28 matches the paper)")
    p.add_argument("--grayscale", action="store_true", help="convert RGB data sets to grayscale")
    p.add_argument("--download", action="store_true", help="download the standard files if missing")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p)
    p.add_argument("--temperature", type=nonneg, help="softmax temperature, 0: always the most "
                   "likely token (default: the config's)")
    p.add_argument("--steps", type=count, help="sampling steps (default: one per latent token)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--batch-size", type=count, default=64)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    add_weights_arg(p)
    add_refine_args(p)


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS
    parser = ArgumentParser(
        prog="spikediff", description=__doc__,
        epilog="Export, hardware and energy tools: spikediff-export, spikediff-run, "
               "spikediff-energy.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the VQ-SVAE, then the denoiser",
                       description="Train stage 1 (VQ-SVAE) and stage 2 (spiking denoiser). "
                       "RUN_DIR/checkpoint.pt is rewritten after every epoch; --resume "
                       "continues a stopped run exactly.")
    _add_data_args(p, dataset_default=None)  # None: with --resume, "not given" is not "mnist"
    p.add_argument("--out", required=True, help="run folder (checkpoint, PNGs)")
    p.add_argument("--preset", choices=list(PRESETS), help="(default: default)")
    p.add_argument("--config", help="TOML file overriding the preset (sections vq, denoiser, "
                   "diffusion, train)")
    p.add_argument("--stage", choices=["both", "vq", "denoiser", "decoder"], default="both",
                   help="both: the VQ-SVAE, then the denoiser, then the decoder stage where "
                   "train.epochs_decoder > 0; decoder: train the VQ-SVAE's decoding side further "
                   "on frozen codes (with --finetune CKPT: CKPT's whole model, denoiser unchanged)")
    p.add_argument("--vq-from", metavar="CKPT", help="start a new run at the denoiser stage on "
                   "the trained VQ-SVAE of CKPT (its VQ settings, data set and holdout)")
    p.add_argument("--finetune", metavar="CKPT", help="start a new run from CKPT's trained model "
                   "and train its denoiser further under this run's [train] settings (learning "
                   "rate, schedule, weight average) with a fresh optimizer; the denoiser starts "
                   "from CKPT's averaged weights where it kept them (with --stage decoder: train "
                   "its decoder instead, the denoiser as it is)")
    p.add_argument("--epochs-vq", type=count)
    p.add_argument("--epochs-denoiser", type=count)
    p.add_argument("--epochs-decoder", type=count0, help="epochs of the decoder stage (default 0: none)")
    p.add_argument("--batch-size", type=count)
    p.add_argument("--seed", type=seed)
    p.add_argument("--firing-penalty", type=nonneg, metavar="W",
                   help="add W x the denoiser's mean firing rate above target to its loss: "
                   "sparser spikes, less energy on a chip (train.firing_penalty; default 0: off)")
    p.add_argument("--firing-target", type=rates, metavar="R[,R...]",
                   help="firing rate each denoiser layer may reach unpenalised, one for all or "
                   "one per layer, in [0, 1] (train.firing_target; default 0)")
    p.add_argument("--limit", type=count, help="train on the first N images only (quick runs)")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoint.pt (with "
                   "--epochs-denoiser N: train a finished run further, exactly as if N had been set)")
    p.add_argument("--allow-data-change", action="store_true", help="with --resume: continue "
                   "on data that differs from what the run recorded (by sha256)")
    p.add_argument("--time-budget", type=positive, metavar="MIN",
                   help="end the denoiser stage after the epoch that finishes past MIN minutes "
                   "of wall time (the checkpoint records where it stopped)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate images from a checkpoint")
    _add_sampling_args(p)
    p.add_argument("--n", "--num-images", dest="n", type=count, default=64,
                   help="number of images (under torchrun: --num-images, as torchrun takes "
                   "--n for its own flags)")
    p.add_argument("--out", default="samples.png", help="PNG grid to write")
    p.add_argument("--npz", help="also write the images (uint8) and token grids here")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("combine", help="one model from two runs: one's denoiser, another's decoder",
                       description="Write a checkpoint with the denoiser of one run and the "
                       "VQ-SVAE (decoder included) of another. Both must share the VQ-SVAE's "
                       "encoding side bit for bit, as runs built on one VQ-SVAE do (--vq-from, "
                       "--finetune, --stage decoder): the decoder stage never sees the "
                       "denoiser, so a decoder trained on one such run serves them all.")
    p.add_argument("--denoiser", required=True, metavar="CKPT", help="take the denoiser from here")
    p.add_argument("--decoder", required=True, metavar="CKPT",
                   help="take the VQ-SVAE, with its decoder, from here")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_combine)

    p = sub.add_parser("set-sampling", help="record the sampling settings a model samples best with",
                       description="Write a copy of a checkpoint whose default sampling settings "
                       "(temperature, refinement) are the ones given, so that `spikediff sample`, "
                       "the export, spikediff-run and spikediff-energy use them without flags. "
                       "Choose them on held-out images: spikediff eval --select-only.")
    p.add_argument("--checkpoint", required=True, help="the checkpoint to copy")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--temperature", type=nonneg, help="softmax temperature of the draws "
                   "(0: always the most likely token)")
    add_refine_args(p)
    p.add_argument("--note", required=True, help="how the settings were chosen (shown by "
                   "`spikediff info`), e.g. 'held-out FID, N = 1000, temperatures 0.6-1.0'")
    p.add_argument("--weights-only", action="store_true", help="leave out the optimizer, "
                   "discriminator and random state (what a shipped file carries; the copy "
                   "can then be fine-tuned with --finetune but not continued with --resume)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_set_sampling)

    p = sub.add_parser("info", help="describe a checkpoint")
    p.add_argument("--checkpoint")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("eval", help="standard FID, KID and reconstruction of a checkpoint",
                       description="Standard FID and KID of generated images against the whole "
                       "test split (TF-Inception FID network, features cached), the paper's "
                       "protocol beside it, and the VQ-SVAE's reconstruction quality. With "
                       "--temperatures the temperature is chosen on held-out training images, "
                       "never on the test split.")
    add_checkpoint_args(p, "; the test split of this data set is the reference")
    p.add_argument("--data-root")
    p.add_argument("--n", "--num-images", dest="n", type=at_least(2), default=10000,
                   help="samples for FID/KID (under torchrun: --num-images)")
    p.add_argument("--temperature", type=nonneg, help="default: the checkpoint's")
    p.add_argument("--temperatures", type=temperatures, help="comma-separated candidates, chosen by FID on "
                   "held-out training images (e.g. 0.8,0.9,1.0)")
    p.add_argument("--select-n", type=at_least(2), default=1000, help="samples per candidate temperature")
    p.add_argument("--steps", type=count)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--batch-size", type=count, default=256)
    add_weights_arg(p)
    add_refine_args(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fid-weights", help="FID network file (default: search, see docs)")
    p.add_argument("--recon-fid", action="store_true", help="also the FID of the VQ-SVAE's "
                   "reconstructions of the test split: the ceiling for samples (slow on a CPU)")
    p.add_argument("--select-only", action="store_true", help="with --temperatures: only the "
                   "held-out FID of each candidate; the test split is not touched")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--force", action="store_true", help="overwrite --json if it exists")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)
    return parser


def _finetune_time_steps(a) -> int | None:
    """A --finetune run keeps the checkpoint's network; of its settings a config
    file may change only [denoiser] T: the time steps carry no weights, so the
    same weights can be trained on to work at fewer steps (fewer synaptic
    operations per call on a chip). Anything else there would be ignored: refused."""
    import tomllib
    values = tomllib.loads(Path(a.config).read_text())  # load_config has validated it
    den = values.get("denoiser", {})
    fixed = [f"[{sec}] {k}" for sec in ("vq", "diffusion") for k in values.get(sec, {})]
    fixed += [f"[denoiser] {k}" for k in den if k != "T"]
    if fixed:
        raise SpikediffError(f"{a.config} sets {', '.join(fixed)}, but --finetune keeps the "
                             "checkpoint's network and sampling settings (a config may change "
                             "[train] and [denoiser] T); drop them, or train a new run")
    if "T" in den and a.stage == "decoder":
        raise SpikediffError(f"{a.config} sets [denoiser] T, but --stage decoder does not train "
                             "the denoiser; train it at the new T first (--stage denoiser)")
    return den.get("T")


def cmd_train(a) -> int:
    # the run folder may exist (--resume), but must be a folder: checked before any work
    check_outputs([Path(a.out) / "checkpoint.pt"], force=True)
    from .config import check, load_config
    from .train import train

    cfg, extend = None, None
    epochs = ("epochs_vq", "epochs_denoiser", "epochs_decoder")
    overrides = {k: getattr(a, k) for k in (*epochs, "batch_size", "seed", "firing_penalty",
                                            "firing_target")
                 if getattr(a, k) is not None}
    if a.resume:
        fixed = sorted(set(overrides) - set(epochs))
        if fixed:
            raise SpikediffError(f"--{fixed[0].replace('_', '-')} cannot change when resuming: "
                                 "the run continues with its recorded config")
        extend = overrides
    else:
        cfg = load_config(a.preset or "default", a.config)
        for key, value in overrides.items():
            setattr(cfg.train, key, value)
        check(cfg)
    if a.vq_from and a.finetune:
        raise SpikediffError("--vq-from and --finetune both name the run to build on; give one")
    for flag, value in (("--vq-from", a.vq_from), ("--finetune", a.finetune)):
        if value and a.stage == "vq":
            raise SpikediffError(f"{flag} takes a trained VQ-SVAE and trains the denoiser; "
                                 "it cannot go with --stage vq")
    if a.vq_from and a.stage == "decoder":
        raise SpikediffError("--vq-from trains a new denoiser; to train only the decoder of a "
                             "finished run, use --finetune CKPT --stage decoder")
    stages = ("vq", "denoiser", "decoder") if a.stage == "both" else (a.stage,)
    denoiser_T = _finetune_time_steps(a) if a.finetune and a.config and not a.resume else None
    # with --resume these may repeat the run's own settings, but not change them
    given = {k: getattr(a, k) for k in ("dataset", "preset", "config", "limit", "image_size",
                                        "grayscale", "vq_from", "finetune")}
    from . import distributed
    with distributed.group(pick_device(a.device)) as device:  # under torchrun: one rank's part
        path = train(cfg, a.dataset or "mnist", a.data_root, a.out, stages=stages,
                     device=device,
                     resume=a.resume, limit=a.limit, image_size=a.image_size,
                     rgb=False if a.grayscale else None, download=a.download, folder=a.folder,
                     progress=not a.no_progress, time_budget_min=a.time_budget, extend=extend,
                     vq_from=a.vq_from, finetune=a.finetune, denoiser_T=denoiser_T,
                     allow_data_change=a.allow_data_change,
                     resume_flags={k: v for k, v in given.items() if v not in (None, False)})
        main = distributed.is_main()
    if main:
        print(f"checkpoint: {path}")
    return 0


def cmd_sample(a) -> int:
    check_outputs([a.out, a.npz], a.force)
    if a.npz is not None and Path(a.npz).resolve() == Path(a.out).resolve():
        raise SpikediffError(f"--out and --npz both name {a.out}; give two files")
    import time

    from . import checkpoint
    from .sample import generate, write_outputs
    pick_checkpoint(a)
    model = checkpoint.load_model(a.checkpoint, weights=a.weights)
    refine = refine_settings(a, model.config.diffusion.refinement())
    from . import distributed
    t0 = time.perf_counter()
    with distributed.group(pick_device(a.device)) as device:  # under torchrun: batches split
        images, tokens = generate(model, a.n, temperature=a.temperature, steps=a.steps,
                                  seed=a.seed, batch_size=a.batch_size, device=device,
                                  progress=not a.no_progress, refine=refine)
        main = distributed.is_main()
    dt = time.perf_counter() - t0
    if not main:
        return 0  # rank 0 writes
    write_outputs(images, tokens, grid=a.out, npz=a.npz)
    print(f"{a.n} images in {dt:.1f} s ({a.n / dt:.1f} img/s) -> {a.out}"
          + (f", {a.npz}" if a.npz else ""))
    return 0


def cmd_combine(a) -> int:
    check_outputs([a.out], a.force)
    from . import checkpoint
    checkpoint.atomic_save(checkpoint.combine(a.denoiser, a.decoder), a.out)
    print(f"checkpoint: {a.out} (denoiser of {a.denoiser}, decoder of {a.decoder})")
    return 0


def cmd_set_sampling(a) -> int:
    check_outputs([a.out], a.force)
    from . import checkpoint
    ckpt = checkpoint.load(a.checkpoint)
    from .config import Config
    refine_settings(a, Config.from_dict(ckpt.config).diffusion.refinement())  # checks the flags
    settings = {f"refine_{k}": v for k, v in refine_overrides(a).items()}
    if a.temperature is not None:
        settings["temperature"] = a.temperature
    if not settings:
        raise SpikediffError("give at least one setting: --temperature or --refine-*")
    if a.weights_only:
        ckpt = checkpoint.weights_only(ckpt)
    tuned = checkpoint.with_sampling(ckpt, settings, a.note)
    checkpoint.atomic_save(tuned, a.out)
    print(f"checkpoint: {a.out}; samples by default with {_sampling_text(checkpoint.sampling_settings(tuned))}")
    return 0


def _sampling_text(s: dict) -> str:
    text = f"temperature {s['temperature']:g}"
    if s["refine_steps"]:
        text += (f", then {s['refine_steps']} refinement steps of {s['refine_fraction']:g} "
                 f"at {s['refine_temperature']:g}")
    return text


def cmd_info(a) -> int:
    from . import checkpoint
    ckpt = checkpoint.load(a.checkpoint)
    d = ckpt.data
    print(f"checkpoint: {checkpoint.resolve(a.checkpoint)}")
    print(f"preset: {ckpt.config['preset']}   stage: {ckpt.stage}   step: {ckpt.step}")
    print(f"data: {d['name']} {d['channels']}x{d['image_size']}x{d['image_size']}, "
          f"{d['n_train']} train images")
    cfg = ckpt.config  # the time steps set what a call costs on a chip (docs/energy.md)
    print(f"time steps T: VQ-SVAE {cfg['vq']['T']}, denoiser {cfg['denoiser']['T']}"
          + (f"; weights quantized for {cfg['train']['quantize']}"
             if cfg["train"].get("quantize") else ""))
    for stage, rows in ckpt.history.items():
        if rows:
            last = rows[-1]
            print(f"{stage}: {len(rows)} epochs, {ckpt.seconds.get(stage, 0):.0f} s; last: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k != "epoch"))
    if ckpt.vq_from:
        print(f"VQ-SVAE taken over from: {ckpt.vq_from}")
    if ckpt.finetuned_from:
        f = ckpt.finetuned_from
        print(f"denoiser fine-tuned from: {f['path']} ({f['weights']} weights after "
              f"{f['denoiser_epochs']} epochs, {f['denoiser_seconds']:.0f} s on {f['hardware']})")
    if ckpt.decoder_from:
        print(f"decoder stage run on the whole model of: {ckpt.decoder_from}")
    if ckpt.combined:
        c = ckpt.combined
        print(f"combined: the denoiser of {c['denoiser']}, the VQ-SVAE (decoder) of {c['decoder']}")
    if ckpt.earlier_decoder:
        e = ckpt.earlier_decoder
        print(f"its decoder had {e['epochs']} decoder-stage epochs before ({e['seconds']:.0f} s)")
    if ckpt.denoiser_ema is not None:
        print(f"denoiser: averaged weights (EMA decay {ckpt.config['train']['ema_decay']}) are "
              "used for sampling and export; --weights raw gives the last step's")
    t = checkpoint.vq_train_settings(ckpt)
    if t.get("adversarial_weight"):
        where = ("in its decoder stage" if (ckpt.combined["decoder_from"] if ckpt.combined
                                             else ckpt.decoder_from)
                 else f"from VQ step {t['adversarial_start']}"
                 + (" and in the decoder stage" if ckpt.history.get("decoder") else ""))
        print(f"VQ-SVAE trained with an adversarial term (weight {t['adversarial_weight']}, "
              f"{where}); its discriminator is not part of the model")
    if ckpt.denoiser is not None:
        print(f"sampling defaults: {_sampling_text(checkpoint.sampling_settings(ckpt))}"
              + (f" ({ckpt.sampling_note})" if ckpt.sampling_note else ""))
    print(f"code version: {ckpt.code_version or '?'}")
    return 0


def cmd_eval(a, sampler=None) -> int:
    """sampler: see evaluate.evaluate (hardware/fid.py passes the emulator)."""
    temps = a.temperatures
    check_outputs([a.json], a.force)
    if a.select_only and not temps:
        raise SpikediffError("--select-only compares the --temperatures candidates; give them")
    import json

    from .atomic import write_text
    from . import distributed
    from .evaluate import evaluate, format_result
    pick_checkpoint(a)
    with distributed.group(pick_device(a.device)) as device:  # under torchrun: samples split
        r = evaluate(a.checkpoint, a.dataset, a.data_root, a.n, temperature=a.temperature,
                     temperatures=temps, select_n=a.select_n, steps=a.steps, seed=a.seed,
                     batch_size=a.batch_size, device=device,
                     fid_weights=a.fid_weights, recon_fid=a.recon_fid,
                     progress=not a.no_progress and distributed.is_main(),
                     weights=a.weights, select_only=a.select_only,
                     refine=refine_from_args(a, a.checkpoint), sampler=sampler)
        main = distributed.is_main()
    if not main:
        return 0  # rank 0 reports
    print(format_result(r))
    if a.json:
        write_text(a.json, json.dumps(r, indent=2))
    return 0


@handle_errors
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    return a.func(a)

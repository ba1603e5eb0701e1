"""`spikediff-energy`: energy estimates from the spikes a model really fires.

    spikediff-energy report --checkpoint CKPT --n 16 --json e.json --plot e.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spikediff.cliutil import (ArgumentParser, add_checkpoint_args, add_random_weights_arg,
                               add_refine_args, pick_checkpoint,
                               check_outputs, count, handle_errors, nonneg, random_weights_model,
                               refine_settings, seed)
from spikediff.errors import SpikediffError


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="spikediff-energy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("report", help="count operations on real generation and price them",
                       description="Generate --n images (denoiser at every sampling step, spike "
                       "generator, decoder) and encode real test images, counting every "
                       "synaptic operation from the recorded spikes; print per layer, per "
                       "component and per image energy under the 45 nm and Loihi figures and "
                       "against the same network as an ANN.")
    add_checkpoint_args(p, "; its test images are the encoder's real input")
    add_random_weights_arg(p)
    p.add_argument("--n", type=count, default=64, help="images to generate (and real images to "
                   "encode); firing rates from fewer than 64 are noisy (default: 64)")
    p.add_argument("--steps", type=count, help="sampling steps (default: one per latent token)")
    p.add_argument("--temperature", type=nonneg, help="sampling temperature, 0: always the "
                   "most likely token (default: the config's)")
    add_refine_args(p)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--batch-size", type=count, default=64)
    p.add_argument("--data-root", help="folder holding the data set (default: $SPIKEDIFF_DATA_ROOT)")
    p.add_argument("--hardware", choices=["45nm", "loihi", "all"], default="all")
    p.add_argument("--constants", help="TOML or JSON file of energy constants (pJ) to override")
    p.add_argument("--set", action="append", default=[], metavar="NAME=PJ",
                   help="override one constant, e.g. --set ac_pj=0.03 (repeatable)")
    p.add_argument("--backend", choices=["norse", "lava"], default="norse",
                   help="where the spikes come from: the Norse model, or a Lava run")
    p.add_argument("--verify", action="store_true",
                   help="also count every spike-fed layer by brute force (all-ones "
                   "convolutions) and fail on any disagreement")
    p.add_argument("--lava-weights", choices=("single", "split"), default="single",
                   help="Loihi synapses per connection as the fixed-point mapping writes them: "
                   "one 8-bit weight (default) or split into two where one is not exact "
                   "(their synaptic operations count twice)")
    p.add_argument("--json", help="write the full report as JSON here")
    p.add_argument("--plot", help="write a bar chart (PNG) of energy per component here")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quiet", action="store_true", help="print only the one-line summary")
    return parser


def load_model_and_data(a):
    """(model, meta, dataset name or None)."""
    from spikediff import checkpoint

    if a.random_weights:
        model = random_weights_model(a)
        meta = {"model": f"preset '{a.random_weights}', 1x28x28",
                "weights": "RANDOM (untrained): firing rates and energies are not those of a "
                           "trained model", "preset": a.random_weights}
        return model, meta, a.dataset or "mnist"
    pick_checkpoint(a)
    ck = checkpoint.load(a.checkpoint)
    try:
        model = checkpoint.model_from(ck)
    except Exception as e:  # wrong keys/shapes in a file that claims our format
        raise checkpoint.CheckpointError(
            f"{checkpoint.resolve(a.checkpoint)} does not load into the model "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if ck.denoiser is None:
        raise checkpoint.CheckpointError(f"{checkpoint.resolve(a.checkpoint)} holds only a trained "
                                         "VQ-SVAE (stage 1); the energy report needs the denoiser")
    d = ck.data
    meta = {"model": f"{checkpoint.resolve(a.checkpoint)} ({d['name']}, "
                     f"{d['channels']}x{d['image_size']}x{d['image_size']})",
            "weights": "trained", "preset": ck.config.get("preset")}
    return model, meta, a.dataset or d.get("name")


def real_images(model, dataset, data_root, n):
    """First n test images in [0, 1] shaped like the model's input, or (None, why)."""
    from spikediff.data import load_images
    if dataset in (None, "folder"):
        return None, f"no standard data set to read real images from ({dataset})"
    try:
        ds = load_images(dataset, data_root, "test", image_size=model.image_size,
                         rgb=model.channels == 3)
    except (SpikediffError, OSError) as e:
        return None, f"{dataset} test images unavailable ({str(e).splitlines()[0]})"
    return ds.float01(slice(0, n)), None


def _lava_tally(model, a, images, refine):
    """Counts recorded from a Lava run (hardware.lava), through the shared counting API."""
    try:
        from hardware.lava import client
    except ImportError as e:
        raise SpikediffError(f"--backend lava: hardware.lava.client is not importable ({e}); "
                             "use --backend norse") from None
    try:
        client.find_lava_python()
    except client.LavaUnavailableError as e:
        raise SpikediffError("--backend lava: no Lava environment (" + str(e).splitlines()[0]
                             + "); create it with `bash scripts/setup.sh` or use --backend norse") from None
    from .counting import Tally
    from .lava import record
    tally = Tally()
    info = record(model, n=a.n, steps=a.steps, seed=a.seed, temperature=a.temperature,
                  refine=refine, real_images=images, tally=tally, progress=not a.no_progress)
    return tally, dict(info or {})


def cmd_report(a) -> int:
    check_outputs([a.json, a.plot], a.force)
    if a.json is not None and a.plot is not None and Path(a.json).resolve() == Path(a.plot).resolve():
        raise SpikediffError(f"--json and --plot both name {a.json}; give two files")
    from .constants import load_constants
    from .report import build_report, format_report, measure, save_plot, summary_line, write_json

    constants = load_constants(a.constants, a.set)
    model, meta, dataset = load_model_and_data(a)
    refine = refine_settings(a, model.config.diffusion.refinement())
    warnings = []
    if meta["weights"] != "trained":
        warnings.append("random weights: rates come from an untrained network")
    images, why = real_images(model, dataset, a.data_root, a.n)
    if images is None:
        warnings.append(f"encoder counted on the generated images instead of real test images: {why}")
    meta.update(backend=a.backend, time_steps={"vq": model.vq.cfg.T, "denoiser": model.denoiser.cfg.T})
    if a.backend == "lava":
        tally, info = _lava_tally(model, a, images, refine)
    else:
        tally, info = measure(model, n=a.n, steps=a.steps, seed=a.seed, temperature=a.temperature,
                              refine=refine, real_images=images, batch_size=a.batch_size,
                              progress=not a.no_progress, verify=a.verify)
    meta.update(info)
    meta["warnings"] = warnings
    rep = build_report(model, tally, constants, meta, lava_weights=a.lava_weights)
    bf = rep.get("brute_force_check")
    if a.json:
        write_json(rep, a.json)
    if a.plot:
        save_plot(rep, a.plot, a.hardware,
                  title=f"Energy per component ({meta.get('preset')}, "
                        f"{'random weights' if meta['weights'] != 'trained' else 'trained'})")
    print(summary_line(rep) if a.quiet else format_report(rep, a.hardware))
    for p in (a.json, a.plot):
        if p:
            print(f"wrote {p}")
    if bf and not bf["all_agree"]:
        print("error: fan-out and brute-force counts disagree (see brute_force_agrees in the JSON)",
              file=sys.stderr)
        return 1
    return 0


@handle_errors
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.command == "report":
        return cmd_report(a)
    return 2

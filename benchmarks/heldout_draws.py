"""What the benchmarks on the committed recipe's draws share (critic_resampling,
decoder_on_samples, sampler_variants): their command-line arguments, and a
set-up that loads the checkpoint, its training images with the held-out ones
last, and the FID network with the held-out images' features. Every number
they print is on held-out training images, never the test split."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from spikediff import checkpoint, metrics
from spikediff.data import load_images
from spikediff.diffusion import Refinement
from spikediff.errors import SpikediffError
from spikediff.evaluate import reference_features

COMMITTED = Path(__file__).resolve().parent.parent / "spikediff" / "weights" / "mnist-finetuned.pt"


def parser(doc: str, work_help: str) -> argparse.ArgumentParser:
    """The shared arguments; the sampling defaults are the committed model's recipe."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(COMMITTED),
                   help="model to draw from (default: the committed MNIST model)")
    p.add_argument("--data-root", help="folder with the data set's standard files")
    p.add_argument("--work", required=True, help=work_help)
    p.add_argument("--n", type=int, default=1000, help="images per FID (default: 1000)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature (default: the committed recipe's, 1.0)")
    p.add_argument("--refine-steps", type=int, default=40, help="refinement steps (default: 40)")
    p.add_argument("--refine-fraction", type=float, default=0.1,
                   help="tokens each refinement step redraws (default: 0.1)")
    p.add_argument("--refine-temperature", type=float, default=0.3,
                   help="temperature of the refinement draws (default: 0.3)")
    p.add_argument("--fid-weights", help="FID network file (default: found as `spikediff eval` "
                   "finds it)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@dataclass
class Setup:
    ckpt: dict
    model: object
    images: torch.Tensor  # all training images, the `held` held-out ones last
    held: int
    refine: Refinement
    work: Path
    progress: bool

    def reference(self, a):
        """(FID network, feature cache, held-out images' features)."""
        net, cache = metrics.FIDNetwork(a.fid_weights), metrics.FeatureCache()
        d = self.ckpt["data"]
        ref, _ = reference_features(net, cache, d["name"], a.data_root, "train", d["image_size"],
                                    d["channels"] == 3, self.progress, holdout_of=self.held)
        return net, cache, ref

    def sampling(self, a) -> dict:
        return {"temperature": a.temperature,
                "refine": [a.refine_steps, a.refine_fraction, a.refine_temperature]}


def setup(a) -> Setup:
    ckpt = checkpoint.load(a.checkpoint)
    model = checkpoint.model_from(ckpt).eval()
    d = ckpt["data"]
    if not d["holdout"]:
        raise SpikediffError(f"{a.checkpoint} kept no held-out training images to measure on")
    images = load_images(d["name"], a.data_root, "train", image_size=d["image_size"],
                         rgb=d["channels"] == 3).images
    refine = Refinement(a.refine_steps, a.refine_fraction, a.refine_temperature)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be good
    return Setup(ckpt, model, images, d["holdout"], refine, work, not a.no_progress)


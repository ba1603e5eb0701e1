"""`spikediff eval`: standard FID, KID and reconstruction quality of a checkpoint.

FID/KID use the standard TF-Inception FID network (metrics.py) with reference
features over the full test split, cached per data set, split, resolution and
data-file hashes. Samples' features are cached too, so a killed run resumes.
The paper-protocol line repeats the paper's setting (1,280 samples against the
first 1,280 test images) with the standard network and a real square root.
The sampling temperature is either given or chosen on held-out *training*
images (the checkpoint's holdout), never on the test split.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import torch

from . import checkpoint, distributed, metrics, spike_conv
from .atomic import write_text
from .config import Refinement, check_refine
from .data import load_images
from .errors import SpikediffError
from .sample import generate

PAPER_N = 1280
# How a seed becomes draws, in the cache keys: "perbatch", a generator per batch
# from (seed, batch index) (sample.generate); the keys of the one generator through
# all batches, before, had none, and those caches are not reused.
DRAWS = "-perbatch"


def _feats(net, images01, cache, key, progress):
    return metrics.features_resumable(net, images01, cache, key, progress=progress)


def reference_features(net, cache, dataset, data_root, split, image_size, rgb, progress,
                       holdout_of: int | None = None):
    """(FID features, uint8 images) of a data split (or of the last `holdout_of`
    train images)."""
    data = load_images(dataset, data_root, split, image_size=image_size, rgb=rgb)
    images = data.images
    tag = split
    if holdout_of:
        images = images[len(images) - holdout_of:]
        tag = f"{split}-holdout{holdout_of}"
    key = metrics.reference_key(dataset, tag, tuple(images.shape[1:]), data.source_files, net)
    return _feats(net, images.float() / 255, cache, key, progress), images


def fid_of(feats_a, feats_b) -> float:
    return metrics.frechet_distance(*metrics.feature_stats(feats_a), *metrics.feature_stats(feats_b))


def denoiser_id(model) -> str:
    """A hash of all that token sampling depends on: the denoiser's weights and
    the denoiser and diffusion settings (not the VQ-SVAE's)."""
    cfg = model.config
    settings = json.dumps([dataclasses.asdict(cfg.denoiser), dataclasses.asdict(cfg.diffusion),
                           model.diffusion_steps, list(model.grid)])
    return hashlib.sha256((settings + checkpoint.weights_hash(model.denoiser)).encode()
                          ).hexdigest()[:16]


def sampled_images(cache, model, n, temperature, steps, seed, batch_size, device, progress,
                   refine: Refinement) -> torch.Tensor:
    """n generated images. Their token grids are cached by the denoiser's hash,
    so checkpoints that share a denoiser (a decoder-stage run and the run it
    came from) draw them once and then only decode them."""
    backend = getattr(model, "backend_tag", "") + spike_conv.tag()
    key = (f"tokens-{denoiser_id(model)}{backend}-n{n}-T{temperature}"
           f"-s{steps}{_refine_tag(refine)}-seed{seed}{DRAWS}-b{batch_size}")
    hit = cache.shared_get(key)
    if hit is None:  # under torchrun the ranks draw their share of the batches
        images, tokens = generate(model, n, temperature=temperature, steps=steps, seed=seed,
                                  batch_size=batch_size, device=device, progress=progress,
                                  refine=refine)
        if distributed.is_main():
            cache.put(key, tokens=tokens.numpy())
        return images
    tokens = torch.from_numpy(hit["tokens"])
    # decoded in the batches the sampler decodes in
    return decode_tokens(model.vq.to(device).eval(), tokens, batch_size, device)


def decode_tokens(vq, tokens: torch.Tensor, batch_size: int, device="cpu") -> torch.Tensor:
    """Images [N, C, H, W] in [0, 1] (on the CPU) of token grids, batch by batch."""
    return torch.cat([vq.decode(tokens[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(tokens), batch_size)])


def _refine_tag(refine: Refinement) -> str:
    # Without refinement the keys are what they were before refinement existed,
    # so caches filled then stay valid.
    return (f"-refine{refine.steps}x{refine.fraction}T{refine.temperature}" if refine.steps
            else "")


def sample_features(net, cache, model, n, temperature, steps, seed, batch_size, device, progress,
                    ckpt_id: str, refine: Refinement = Refinement()):
    """FID features of n generated images; the images are cached too, since
    drawing them costs as much CPU time as their features."""
    key = (f"samples-{ckpt_id}{spike_conv.tag()}-n{n}-T{temperature}-s{steps}{_refine_tag(refine)}"
           f"-seed{seed}{DRAWS}-b{batch_size}-net{net.sha256[:16]}")
    hit = cache.shared_get(key + "/images")
    if hit is not None:
        images = torch.from_numpy(hit["images"])
    else:
        images = sampled_images(cache, model, n, temperature, steps, seed, batch_size, device,
                                progress, refine)
        if distributed.is_main():
            cache.put(key + "/images", images=images.numpy())
    return _feats(net, images, cache, key, progress), images


@torch.no_grad()
def reconstruction(model, images_u8: torch.Tensor, device, batch_size=500):
    """(metrics, reconstructed images in [0, 1] on the CPU)."""
    vq = model.vq.to(device).eval()
    mse, ssim_sum, recons = 0.0, 0.0, []
    for i in range(0, len(images_u8), batch_size):
        x = images_u8[i:i + batch_size].to(device).float() / 255
        r = vq.decode(vq.encode(x))
        mse += torch.nn.functional.mse_loss(r, x, reduction="sum").item()
        ssim_sum += metrics.ssim(r.cpu(), x.cpu()) * len(x)
        recons.append(r.cpu())
    n = len(images_u8)
    return {"mse": mse / images_u8[0].numel() / n, "ssim": ssim_sum / n, "n": n}, torch.cat(recons)


def reconstruction_fid(net, cache, recons, ref, file_id: str, split: str, progress) -> float:
    """FID of a checkpoint file's reconstructions of a split against that split's
    features `ref`; the reconstructions' features are cached per file and split."""
    return fid_of(_feats(net, recons, cache, f"recon-{file_id}-{split}-net{net.sha256[:16]}",
                         progress), ref)


def evaluate(ckpt_path, dataset, data_root, n=10000, *, temperature=None, temperatures=None,
             select_n=1000, steps=None, seed=0, batch_size=256, device="cpu", fid_weights=None,
             paper_protocol=True, recon_fid=False, progress=True, weights="ema",
             select_only=False, refine: Refinement | None = None, sampler=None) -> dict:
    """refine: the sampler's refinement (None: the checkpoint config's). sampler:
    a function model -> what draws the samples in its place (generate(),
    vq.decode(), backend_tag and a `backend` name), e.g. the Lava fixed_pt
    emulator (hardware/fid.py); reconstruction stays the float VQ-SVAE's."""
    ckpt = checkpoint.load(ckpt_path)
    model = checkpoint.model_from(ckpt, weights)
    sampler = sampler(model) if sampler is not None else model
    refine = model.config.diffusion.refinement() if refine is None else refine
    check_refine(refine)
    d = ckpt.data
    dataset = dataset or d["name"]  # None: the data set the checkpoint was trained on
    if d["name"] != dataset:
        raise SpikediffError(f"the checkpoint was trained on {d['name']}, not {dataset}; "
                             f"pass --dataset {d['name']}")
    size, rgb = d["image_size"], d["channels"] == 3
    net = metrics.FIDNetwork(fid_weights, device=device)
    cache = metrics.FeatureCache()
    has_average = ckpt.denoiser_ema is not None
    file_id = ckpt_id = metrics.file_sha256(checkpoint.resolve(ckpt_path))[:16]
    if has_average:
        ckpt_id += f"-{weights}"  # the two denoisers' samples are cached apart
    ckpt_id += getattr(sampler, "backend_tag", "")
    t0 = time.perf_counter()
    result = {"checkpoint": str(checkpoint.resolve(ckpt_path)), "dataset": dataset,
              "network": net.name, "seed": seed, "steps": steps or model.diffusion_steps,
              "denoiser_weights": weights if has_average else "raw",
              "backend": getattr(sampler, "backend_name", "norse")}
    if refine.steps:
        result["refine"] = dataclasses.asdict(refine)

    if temperature is None and temperatures:
        if not d.get("holdout"):
            raise SpikediffError("this checkpoint has no held-out training images to choose the "
                                 "temperature on; pass --temperature")
        held, _ = reference_features(net, cache, dataset, data_root, "train", size, rgb, progress,
                                     holdout_of=d["holdout"])
        scores = {}
        for temp in temperatures:
            f, _ = sample_features(net, cache, sampler, select_n, temp, steps, seed + 1, batch_size,
                                   device, progress, ckpt_id, refine)
            scores[temp] = fid_of(f, held)
        temperature = min(scores, key=scores.get)
        result["temperature_selection"] = {
            "on": f"last {d['holdout']} train images (never trained on)", "n": select_n,
            "fid_by_temperature": {str(k): v for k, v in scores.items()}}
    temperature = model.config.diffusion.temperature if temperature is None else temperature
    result["temperature"] = temperature
    if select_only:  # tuning: the test split stays untouched
        result["seconds"] = time.perf_counter() - t0
        return result

    ref, test_images = reference_features(net, cache, dataset, data_root, "test", size, rgb,
                                          progress)
    feats, images = sample_features(net, cache, sampler, n, temperature, steps, seed, batch_size,
                                    device, progress, ckpt_id, refine)
    result["fid"] = {"value": fid_of(feats, ref), "n_samples": n,
                     "reference": f"{dataset} test split, all {len(ref)} images"}
    kmean, kstd = metrics.kid(feats, ref)
    result["kid"] = {"mean": kmean, "std": kstd, "n_samples": n, "subset_size": min(1000, n)}
    if paper_protocol and n >= PAPER_N and len(ref) >= PAPER_N:
        result["paper_protocol_fid"] = {
            "value": fid_of(feats[:PAPER_N], ref[:PAPER_N]), "n_samples": PAPER_N,
            "reference": f"first {PAPER_N} {dataset} test images"}
    result["reconstruction"], recons = reconstruction(model, test_images, device)
    if recon_fid:
        # The VQ's ceiling: generated images can only be as good as the codes'
        # decodings, so a sample FID near this one means the decoder limits it.
        result["reconstruction"]["fid"] = reconstruction_fid(net, cache, recons, ref, file_id,
                                                             "test", progress)
    result["seconds"] = time.perf_counter() - t0
    return result


def _refine_line(r: dict) -> list[str]:
    if "refine" not in r:
        return []
    f = r["refine"]
    return [f"refinement: {f['steps']} steps, each redrawing {f['fraction']:g} of the tokens "
            f"at temperature {f['temperature']:g}"]


def format_result(r: dict) -> str:
    if "fid" not in r:  # --select-only
        sel = r["temperature_selection"]
        return "\n".join([f"checkpoint: {r['checkpoint']} ({r['denoiser_weights']} denoiser "
                          "weights)", f"network: {r['network']}"] + _refine_line(r)
                         + [f"FID of {sel['n']} samples vs the {sel['on']}:"]
                         + [f"  temperature {t}: {v:.2f}"
                            for t, v in sel["fid_by_temperature"].items()]
                         + [f"best: {r['temperature']}"])
    lines = [f"checkpoint: {r['checkpoint']}"
             + (" (averaged denoiser weights)" if r.get("denoiser_weights") == "ema" else "")
             + (f"; sampled on {r['backend']}" if r.get("backend", "norse") != "norse" else ""),
             f"network: {r['network']}",
             f"temperature: {r['temperature']}" + (
                 f" (chosen on {r['temperature_selection']['on']})"
                 if "temperature_selection" in r else ""),
             *_refine_line(r),
             f"FID {r['fid']['value']:.2f}  ({r['fid']['n_samples']} samples vs "
             f"{r['fid']['reference']})",
             f"KID {r['kid']['mean']:.5f} +- {r['kid']['std']:.5f}"]
    if "paper_protocol_fid" in r:
        p = r["paper_protocol_fid"]
        lines.append(f"paper-protocol FID {p['value']:.2f}  ({p['n_samples']} samples vs "
                     f"{p['reference']})")
    rec = r["reconstruction"]
    lines.append(f"reconstruction: MSE {rec['mse']:.5f}, SSIM {rec['ssim']:.4f}"
                 + (f", FID {rec['fid']:.2f}" if "fid" in rec else "")
                 + f" ({rec['n']} test images)")
    return "\n".join(lines)

"""What Lava fixed_pt (Loihi-like integers) does to the images: pixel error and FID.

    python benchmarks/lava_fid.py                          # shipped checkpoint, N = 200
    python benchmarks/lava_fid.py --n 200 --steps 12 --batch-size 50
    python benchmarks/lava_fid.py --checkpoint CKPT --n 100 --json out.json

Three sets of N images, generated in the same batches (batch i of every set is
one call of `hardware.backends.generate`, the code behind `spikediff-run`):

* lava:    every spiking layer on Lava (--lava-mode, default fixed_pt), seed A;
* norse_a: the Norse model (--norse-dtype, default float64, which is what the
           float64 NIR file and Lava floating_pt compute), the same seed A: the
           same host-side random numbers (softmax draws, reveal schedule), so every
           difference from `lava` comes from the spiking arithmetic;
* norse_b: the Norse model with seed B: another draw from the same model, the
           noise floor of the FID at this N.

The Lava run also carries a Norse model in lock step (as `spikediff-run
--compare` does, without per-layer recording): at every diffusion step Norse
sees Lava's x_t and draws with the same random numbers, which counts the token
draws that differ because of the arithmetic alone; at the end Norse decodes
Lava's tokens, which measures the decoder's pixel error alone.

Reported (printed, and written to --json, default benchmarks/results/lava_fid.json):
FID(lava, norse_a) and FID(lava, norse_b) against the floor FID(norse_a,
norse_b), each set's FID against the full MNIST test split, KID for the same
pairs, pixel differences lava vs norse_a (end to end, and decode only), the
fraction of differing token draws, N, steps and wall times.

FID of N samples is biased upward at small N (its expectation falls roughly as
1/N), so these FIDs mean something only next to each other at the same N, and
the FIDs against the test split are not comparable with the README's N = 5,000
numbers. How to read them: lava and norse_a are paired (same draws), so
FID(lava, norse_a) is 0 when fixed_pt changes nothing and grows with the
perturbation - it is *not* an independent-sample FID, and lying below the floor
does not prove equal distributions. The distribution-level test is
FID(lava, norse_b) (independent draws) against the floor FID(norse_a, norse_b),
and the three FIDs against the test split side by side.

Resumable: every generated batch is kept (npz under --cache, default
runs/lava_fid/<checkpoint, steps, temperature, batch, seeds, modes>/) and the FID
features go to the FeatureCache (~/.cache/spikediff/fid) chunk by chunk, so a
killed run continues where it stopped. Note that fixed_pt scales are
calibrated by the Lava worker from the float currents it has seen (the largest
so far, see hardware/lava/worker.py), so the Lava batches after a restart start
from a fresh calibration. --time-budget stops starting new Lava batches after
that many minutes; the report then uses the batches that are complete, for
every set, and says so (n < n_requested).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from spikediff.cliutil import handle_errors  # noqa: E402
from spikediff.cliutil import ArgumentParser  # one error: line, exit 2

RESULTS = ROOT / "benchmarks" / "results"
SETS = ("lava", "norse_a", "norse_b")


# --------------------------------------------------------------------- metrics ---

def _fid(fa, fb) -> float:
    from spikediff.evaluate import fid_of
    return fid_of(fa, fb)


def _kid(fa, fb) -> dict:
    from spikediff import metrics
    m = max(2, min(1000, len(fa) // 2, len(fb) // 2))
    mean, std = metrics.kid(fa, fb, subset_size=m)
    return {"mean": mean, "std": std, "subset_size": m}


def assemble(images: dict, tokens: dict, feats: dict, ref_feats, *, lockstep: dict | None = None,
             ref_name: str = "test split") -> dict:
    """The report's numbers from the three sets.

    images: {set: [N, C, H, W] in [0, 1]}, tokens: {set: [N, h, w]},
    feats: {set: [N, D]} (FID features), ref_feats: [M, D] of the data split;
    lockstep: {"differing_draws", "draws", "decode_images": Lava's images,
    "decode_reference": Norse's decoding of the same tokens} from the Lava run.
    """
    n = {k: len(v) for k, v in images.items()}
    if len(set(n.values())) != 1:
        raise ValueError(f"sets of different sizes: {n}")
    N = n["lava"]
    la, na = (torch.as_tensor(images[k]).double() for k in ("lava", "norse_a"))
    d = (la - na).abs()
    per_image = d.flatten(1).mean(1)
    tl, ta = torch.as_tensor(tokens["lava"]), torch.as_tensor(tokens["norse_a"])
    same_img = (tl == ta).flatten(1).all(1)
    out = {
        "n": N,
        "fid": {
            "lava_vs_norse_same_seed": _fid(feats["lava"], feats["norse_a"]),
            "lava_vs_norse_seed_b": _fid(feats["lava"], feats["norse_b"]),
            "norse_seed_a_vs_seed_b (floor)": _fid(feats["norse_a"], feats["norse_b"]),
            **{f"{k}_vs_{ref_name.replace(' ', '_')}": _fid(feats[k], ref_feats) for k in SETS},
        },
        "kid": {
            "lava_vs_norse_same_seed": _kid(feats["lava"], feats["norse_a"]),
            "lava_vs_norse_seed_b": _kid(feats["lava"], feats["norse_b"]),
            "norse_seed_a_vs_seed_b (floor)": _kid(feats["norse_a"], feats["norse_b"]),
            **{f"{k}_vs_{ref_name.replace(' ', '_')}": _kid(feats[k], ref_feats) for k in SETS},
        },
        "pixels_end_to_end": {
            "what": "|lava - norse_a| per pixel, images in [0, 1], same seed, each back end on "
                    "its own trajectory (token differences included)",
            "mean_abs": float(d.mean()), "max_abs": float(d.max()),
            "rmse": float(d.pow(2).mean().sqrt()),
            "median_of_per_image_mean_abs": float(per_image.median()),
            "images_with_identical_tokens": int(same_img.sum()),
        },
        "tokens_end_to_end": {
            "what": "final token grids, lava vs norse_a (same seed, own trajectories)",
            "differing": int((tl != ta).sum()), "total": int(tl.numel()),
            "fraction": float((tl != ta).double().mean()),
        },
    }
    if lockstep is not None:
        dl = (torch.as_tensor(lockstep["decode_images"]).double()
              - torch.as_tensor(lockstep["decode_reference"]).double()).abs()
        out["token_draws_lockstep"] = {
            "what": "proposals drawn from Lava's vs Norse's logits on the same x_t with the same "
                    "random numbers, every position at every step (as spikediff-run --compare "
                    "counts them; positions already revealed included)",
            "differing": int(lockstep["differing_draws"]), "total": int(lockstep["draws"]),
            "fraction": lockstep["differing_draws"] / max(int(lockstep["draws"]), 1),
        }
        out["pixels_decode_only"] = {
            "what": "|Lava decoder - Norse decoder| on the same (Lava's) tokens, images in [0, 1]",
            "mean_abs": float(dl.mean()), "max_abs": float(dl.max()),
            "rmse": float(dl.pow(2).mean().sqrt()),
        }
    return out


def format_report(r: dict) -> str:
    f, k = r["fid"], r["kid"]
    lines = [f"N = {r['n']} images per set" + (f" (of {r['n_requested']} requested)"
                                              if r.get("n_requested", r["n"]) != r["n"] else "")
             + (f", {r['steps']} sampling steps, temperature {r['temperature']:g}"
                if "steps" in r else "")]
    for name, v in f.items():
        kk = k.get(name)
        lines.append(f"  FID {name:38s} {v:8.2f}" + (f"   KID x1e3 {1e3 * kk['mean']:7.2f} "
                                                    f"+- {1e3 * kk['std']:.2f}" if kk else ""))
    p = r["pixels_end_to_end"]
    lines.append(f"  pixels lava vs norse_a (end to end): mean |d| {p['mean_abs']:.4f}, "
                 f"max {p['max_abs']:.4f}, rmse {p['rmse']:.4f}; "
                 f"{p['images_with_identical_tokens']}/{r['n']} images with identical tokens")
    t = r["tokens_end_to_end"]
    lines.append(f"  final tokens differing lava vs norse_a: {t['differing']}/{t['total']} "
                 f"({100 * t['fraction']:.2f} %)")
    if "token_draws_lockstep" in r:
        t = r["token_draws_lockstep"]
        lines.append(f"  token draws differing in lock step: {t['differing']}/{t['total']} "
                     f"({100 * t['fraction']:.2f} %)")
        p = r["pixels_decode_only"]
        lines.append(f"  pixels decode only (same tokens): mean |d| {p['mean_abs']:.4f}, "
                     f"max {p['max_abs']:.4f}, rmse {p['rmse']:.4f}")
    return "\n".join(lines)


# ------------------------------------------------------------------ generation ---

def batch_seed(seed: int, i: int) -> int:
    """Seed of batch i: distinct for every (seed, batch) pair below 1,000,003 batches."""
    return seed * 1_000_003 + i


def batches(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - s) for s in range(0, n, batch_size)]


def _load_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        print(f"ignoring unreadable {path}: {e}", file=sys.stderr)
        return None


def _make_no_record():
    from hardware import backends as B

    class NoRecord(B.Backend):
        """A back end seen by `generate`'s parity path without per-layer recording:
        *_record return an empty spike dict; keeps the last decoded images."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.name, self.last_images = inner, inner.name, None

        def _denoise(self, tokens, t, record):
            return self.inner.denoise(tokens, t), {}

        def _decode(self, codes, record):
            self.last_images = self.inner.decode(codes)
            return self.last_images, {}

    return NoRecord


class Generator:
    """Makes (or loads) batch i of each set; back ends are built on first need."""

    def __init__(self, model, a, cache_dir: Path, info):
        self.model, self.a, self.dir, self.info = model, a, cache_dir, info
        self.tmp = self.lava = self.norse = None
        self.setup_s = {}

    def path(self, name, i, size):
        return self.dir / f"{name}-{i:05d}-n{size}.npz"

    def _norse(self):
        if self.norse is None:
            from hardware import backends as B
            t0 = time.perf_counter()
            dtype = torch.float64 if self.a.norse_dtype == "float64" else torch.float32
            self.norse = B.NorseBackend(self.model, dtype)
            self.setup_s["norse"] = time.perf_counter() - t0
        return self.norse

    def _lava(self):
        if self.lava is None:
            from hardware import backends as B
            t0 = time.perf_counter()
            self.tmp = B.TempNir(self.model)
            self.lava = B.LavaBackend(self.tmp.path, self.a.lava_mode, record_layers=False,
                                      weights=self.a.lava_weights, scales=self.a.lava_scales)
            g = self.info   # frozen scales: calibrated once, on a float generation of a batch
            B.calibrate(self.lava, self.a.batch_size, grid=g["grid"], mask_id=g["mask_id"],
                        diffusion_steps=g["diffusion_steps"], steps=self.a.steps,
                        temperature=self.a.temperature, seed=self.a.seed)
            self.setup_s["lava_worker"] = time.perf_counter() - t0
        return self.lava

    def get(self, name, i, size):
        p = self.path(name, i, size)
        if p.exists():
            d = _load_npz(p)
            if d is not None:
                return d, True
        from hardware import backends as B
        from spikediff.sample import save_npz
        g = self.info
        kw = dict(grid=g["grid"], mask_id=g["mask_id"], diffusion_steps=g["diffusion_steps"],
                  steps=self.a.steps, temperature=self.a.temperature,
                  progress=not self.a.no_progress)
        seed = batch_seed(self.a.seed_b if name == "norse_b" else self.a.seed, i)
        t0 = time.perf_counter()
        if name == "lava":
            NoRecord = _make_no_record()
            lava, ref = NoRecord(self._lava()), NoRecord(self._norse())
            images, tokens, par = B.generate(lava, size, seed=seed, reference=ref, **kw)
            wall = time.perf_counter() - t0
            d = {"images": images.numpy(), "tokens": tokens.numpy().astype(np.int32),
                 "decode_reference": ref.last_images.numpy(),
                 "differing_draws": np.array(par.proposals), "draws": np.array(par.proposal_total),
                 "max_abs_logit_diff": np.array(par.values.get("logits", np.nan)),
                 "lava_denoise_s": np.array(lava.timing["denoise_s"]),
                 "norse_denoise_s": np.array(ref.timing["denoise_s"]),
                 "wall_s": np.array(wall), "seed": np.array(seed)}
        else:
            images, tokens, _ = B.generate(self._norse(), size, seed=seed, **kw)
            wall = time.perf_counter() - t0
            d = {"images": images.numpy(), "tokens": tokens.numpy().astype(np.int32),
                 "wall_s": np.array(wall), "seed": np.array(seed)}
        save_npz(p, **d)
        return d, False

    def close(self):
        for x in (self.lava, self.norse, self.tmp):
            if x is not None:
                x.close()


def _cat(parts, key):
    return np.concatenate([p[key] for p in parts]) if parts else None


def default_data_root():
    env = os.environ.get("SPIKEDIFF_DATA_ROOT")
    if env:
        return env
    shared = ROOT.parent / "shared" / "datasets"
    return str(shared) if shared.is_dir() else None


@handle_errors
def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="default: the shipped MNIST checkpoint")
    p.add_argument("--n", type=int, default=200, help="images per set")
    p.add_argument("--steps", type=int, default=10,
                   help="diffusion sampling steps (the model's full schedule is one per token, "
                   "49 on MNIST). Measured on this 2-core CPU, fixed_pt at batch 4: 2.1 s per "
                   "denoiser call (0.53 s per image and step), 0.41 s per decode, 45 s to "
                   "build; 10 steps make 200 images in about 20 min")
    p.add_argument("--batch-size", type=int, default=4,
                   help="images per generate() call. Lava's memory grows with it (a batch is "
                   "block-diagonal copies of ~25 M denoiser synapses per image): batch 10 "
                   "ran a 23 GB machine out of memory, and Lava's time is close to linear "
                   "in the batch (compute-bound), so larger batches gain little")
    p.add_argument("--seed", type=int, default=0, help="seed A (lava and norse_a)")
    p.add_argument("--seed-b", type=int, default=1, help="seed B (norse_b, the noise floor)")
    p.add_argument("--temperature", type=float, help="default: the checkpoint's")
    p.add_argument("--lava-mode", default="fixed_pt", choices=["fixed_pt", "floating_pt"])
    p.add_argument("--lava-scales", default="frozen", choices=["frozen", "per-call"],
                   help="fixed_pt: scales frozen from a float generation of one batch "
                   "(default) or re-calibrated at every call")
    p.add_argument("--lava-weights", default="single", choices=["single", "split"],
                   help="fixed_pt: one 8-bit weight per synapse (a loihi8 checkpoint) or the "
                   "two-synapse split (what benchmarks/results/lava_fid.json was measured with)")
    p.add_argument("--norse-dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--data-root", default=default_data_root(),
                   help="folder holding mnist/ (default $SPIKEDIFF_DATA_ROOT or ../shared/datasets)")
    p.add_argument("--fid-weights")
    p.add_argument("--cache", default=str(ROOT / "runs" / "lava_fid"),
                   help="generated batches go to a sub-folder of this")
    p.add_argument("--time-budget", type=float,
                   help="minutes: start no new Lava batch after this; report the complete ones")
    p.add_argument("--json", default=str(RESULTS / "lava_fid.json"))
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.n < 2 or a.batch_size < 1:
        p.error("--n must be at least 2 and --batch-size at least 1")
    if a.seed == a.seed_b:
        p.error("--seed and --seed-b must differ")

    from spikediff.progress import bar as progress_bar

    from spikediff import checkpoint, metrics
    from spikediff.atomic import write_text
    from spikediff.evaluate import reference_features

    t_start = time.perf_counter()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ck_path = checkpoint.resolve(a.checkpoint)
    ck = checkpoint.load(a.checkpoint)
    model = checkpoint.model_from(ck)
    if a.temperature is None:
        a.temperature = float(model.config.diffusion.temperature)
    S = a.steps or model.diffusion_steps
    a.steps = S
    ck_sha = metrics.file_sha256(ck_path)[:16]
    tag = (f"{ck_sha}-s{S}-T{a.temperature:g}-b{a.batch_size}-seed{a.seed}-{a.seed_b}"
           f"-{a.lava_mode}-norse{a.norse_dtype}"
           + (f"-{a.lava_weights}-{a.lava_scales}" if a.lava_mode == "fixed_pt" else ""))
    cache_dir = Path(a.cache) / tag
    cache_dir.mkdir(parents=True, exist_ok=True)
    info = {"grid": model.grid, "mask_id": model.denoiser.mask_id,
            "diffusion_steps": model.diffusion_steps}
    sizes = batches(a.n, a.batch_size)
    print(f"model: {ck_path}; N={a.n} per set in {len(sizes)} batch(es) of {a.batch_size}; "
          f"{S} of {model.diffusion_steps} sampling steps; temperature {a.temperature:g}; "
          f"lava {a.lava_mode}, norse {a.norse_dtype}; seeds A={a.seed}, B={a.seed_b}; "
          f"cache {cache_dir}", flush=True)

    gen = Generator(model, a, cache_dir, info)
    parts = {k: [] for k in SETS}
    wall = {k: 0.0 for k in SETS}
    fresh = {k: 0 for k in SETS}
    stopped = False
    try:
        bar = progress_bar(total=len(sizes), desc=f"lava {a.lava_mode} batches", unit="batch",
                           show=not a.no_progress)
        fresh_walls = []
        for i, size in enumerate(sizes):
            done = gen.path("lava", i, size).exists()
            # stop before a batch that would (at the median pace so far) end past the budget
            expect = float(np.median(fresh_walls)) if fresh_walls else 0.0
            if (not done and a.time_budget is not None
                    and time.perf_counter() - t_start + expect > 60 * a.time_budget):
                stopped = True
                print(f"time budget of {a.time_budget:g} min: stopping after {i} batch(es)",
                      flush=True)
                break
            d, cached = gen.get("lava", i, size)
            parts["lava"].append(d)
            wall["lava"] += float(d["wall_s"])
            fresh["lava"] += 0 if cached else 1
            if not cached:
                fresh_walls.append(float(d["wall_s"]))
            bar.update(1)
            bar.set_postfix(s_per_img=f"{wall['lava'] / sum(len(x['images']) for x in parts['lava']):.2f}")
        bar.close()
        k = len(parts["lava"])
        for name in ("norse_a", "norse_b"):
            for i in progress_bar(range(k), desc=f"{name} batches", unit="batch",
                                  show=not a.no_progress):
                d, cached = gen.get(name, i, sizes[i])
                parts[name].append(d)
                wall[name] += float(d["wall_s"])
                fresh[name] += 0 if cached else 1
        setup_s = dict(gen.setup_s)
    finally:
        gen.close()
    n = sum(sizes[:len(parts["lava"])])
    if n < 2:
        print("fewer than 2 images generated: nothing to report", file=sys.stderr)
        return 1
    images = {k: torch.from_numpy(_cat(parts[k], "images")) for k in SETS}
    tokens = {k: _cat(parts[k], "tokens") for k in SETS}
    lockstep = {"differing_draws": int(sum(int(x["differing_draws"]) for x in parts["lava"])),
                "draws": int(sum(int(x["draws"]) for x in parts["lava"])),
                "decode_images": images["lava"],
                "decode_reference": torch.from_numpy(_cat(parts["lava"], "decode_reference"))}

    # features (cached per set and N; resumable in chunks of 100)
    t0 = time.perf_counter()
    net = metrics.FIDNetwork(a.fid_weights)
    cache = metrics.FeatureCache()
    d = ck.data
    ref, _ = reference_features(net, cache, d["name"], a.data_root, "test", d["image_size"],
                                d["channels"] == 3, not a.no_progress)
    feats = {k: metrics.features_resumable(net, images[k].float(), cache,
                                           f"lavafid-{tag}-{k}-n{n}-net{net.sha256[:16]}",
                                           chunk=100, progress=not a.no_progress)
             for k in SETS}
    t_feat = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = assemble(images, tokens, feats, ref, lockstep=lockstep, ref_name=f"{d['name']} test")
    t_metrics = time.perf_counter() - t0
    r.update({
        "n_requested": a.n, "steps": S, "full_schedule_steps": model.diffusion_steps,
        "temperature": a.temperature, "batch_size": a.batch_size,
        "seeds": {"A (lava, norse_a)": a.seed, "B (norse_b)": a.seed_b,
                  "per_batch": "seed * 1000003 + batch index"},
        "lava_mode": a.lava_mode, "lava_weights": a.lava_weights, "lava_scales": a.lava_scales, "norse_dtype": a.norse_dtype,
        "checkpoint": str(ck_path), "checkpoint_sha256_16": ck_sha,
        "fid_network": net.name, "fid_reference": f"all {len(ref)} {d['name']} test images",
        "stopped_by_time_budget": stopped,
        "wall_s": {
            "lava_generation (incl. lock-step norse)": wall["lava"],
            "lava_s_per_image": wall["lava"] / n,
            "lava_batch_wall_s": [float(x["wall_s"]) for x in parts["lava"]],
            "lava_denoise_s": float(sum(float(x["lava_denoise_s"]) for x in parts["lava"])),
            "lockstep_norse_denoise_s": float(sum(float(x["norse_denoise_s"])
                                                  for x in parts["lava"])),
            "norse_a_generation": wall["norse_a"], "norse_b_generation": wall["norse_b"],
            "setup_this_invocation": setup_s,
            "fid_features_this_invocation": t_feat, "fid_and_kid_computation": t_metrics,
            "this_invocation_total": time.perf_counter() - t_start,
            "batches_generated_this_invocation": fresh,
            "note": "generation times are per batch as first generated (also when loaded "
                    "from the cache); the first Lava batch of an invocation includes building "
                    "the Lava process graphs, and any batch may include a fixed_pt rebuild "
                    "(new scales); 2-core CPU",
        },
        "notes": [
            "FID at small N is biased upward; read these FIDs only against each other at "
            "this N (the floor FID(norse_a, norse_b)), not against the README's N = 5,000 FIDs.",
            "lava and norse_a are paired (same draws): FID(lava, norse_a) measures how far "
            "fixed_pt moves the same samples (0 if not at all); the distribution-level "
            "comparison is FID(lava, norse_b) (independent draws) vs the floor.",
            "lava and norse_a share every host-side random number (seed A, same batches); "
            "their images differ only through the spiking arithmetic (and, once a draw "
            "differs, through the diverging trajectory).",
            "fixed_pt scales are calibrated by the Lava worker from observed float currents "
            "(largest seen so far in that worker); batches generated after a restart start "
            "from a fresh calibration.",
        ],
        "command": "python benchmarks/lava_fid.py " + " ".join(sys.argv[1:] if argv is None
                                                               else argv),
    })
    print(format_report(r))
    if stopped:
        print(f"NOTE: stopped by --time-budget: N = {n}, not the requested {a.n}")
    if a.json:
        write_text(a.json, json.dumps(r, indent=2) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

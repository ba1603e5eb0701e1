"""Third-party NIR consumers on our exported files: loads / runs / spike agreement per layer.

For each consumer and part, the file is written by one export command, as a user
would (`spikediff-export --to nir --target NAME --part PART`, plus --spiking-only
where the profile needs it), and is not edited afterwards. The consumer's runner
(benchmarks/nir_consumers/NAME.py, in the consumer's own environment where its pins
clash with ours) loads it with the consumer's own NIR import, runs it on real
inputs and records every LIF layer. Its spikes are compared with our executor's
(export/nir_exec.py) on the same file, which `--verify` checks against the Norse
model spike for spike.

    source scripts/setup.sh && SPIKEDIFF_CONSUMERS="sinabs spyx" source scripts/setup.sh
    python benchmarks/nir_consumers.py --data-root ../shared/datasets \
        [--consumers nirtorch snntorch norse sinabs spyx] [--n 4] [--json FILE]

Inputs: real MNIST test images (encoder), their codes (decoder) and their token
grids masked at random diffusion steps (denoiser); random ones without --data-root.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from spikediff.cliutil import ArgumentParser, count, handle_errors

REPO = Path(__file__).resolve().parent.parent
RUNNERS = REPO / "benchmarks" / "nir_consumers"
PARTS = ("encoder", "decoder", "denoiser")
# consumer -> (export --target, environment variable of its Python; None: ours).
# nirtorch's runner maps LIF only (a chip team's own executor), so it gets
# --spiking-only; the profiles of the others write the spiking form themselves.
CONSUMERS = {"nirtorch": ("generic", None), "snntorch": ("snntorch", None),
             "norse": ("norse", None), "sinabs": ("sinabs", "SPIKEDIFF_SINABS_PY"),
             "sinabs-patched": ("sinabs", "SPIKEDIFF_SINABS_PY"),
             "spyx": ("spyx", "SPIKEDIFF_SPYX_PY")}
SPIKING_ONLY = {"nirtorch"}
# the same file, with what from_nir cannot be told set on the loaded model (one spike
# per step, reset to 0): shows that the gap is sinabs' neuron rule and nothing else
RUNNER = {"sinabs-patched": ("sinabs", ["--variant", "hard-reset"])}


def inputs(model, ex, n: int, data_root, seed: int = 0) -> dict[str, torch.Tensor]:
    """[T, B, ...] inputs per part, in float64, from real images where there are some."""
    g = torch.Generator().manual_seed(seed)
    C, S = model.channels, model.image_size
    if data_root:
        from spikediff.data import load_images
        imgs = load_images("mnist", data_root, "test").images[:n].double() / 255
    else:
        imgs = torch.rand(n, C, S, S, generator=g, dtype=torch.float64)
    with torch.no_grad():
        codes = ex.encode(imgs)
        steps = ex.steps
        t = torch.randint(1, steps + 1, (n,), generator=g)
        masked = torch.rand(codes.shape, generator=g) < (t.float() / steps).view(-1, 1, 1)
        tokens = torch.where(masked, torch.full_like(codes, ex.mask_id), codes)
    from export.nir_exec import repeat
    from spikediff.vqsvae import image_current
    return {"encoder": repeat(image_current(imgs), ex.T_vq),
            "decoder": ex.decoder_input(codes), "denoiser": ex.denoiser_input(tokens, t)}


def export(checkpoint, target: str, part: str, spiking: bool, out: Path) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "export", "--to", "nir", "--target", target, "--part", part,
           "--out", str(out), "--force"] + (["--spiking-only"] if spiking else []) + \
        (["--checkpoint", str(checkpoint)] if checkpoint else [])
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    return p.returncode, " ".join(c if " " not in c else repr(c) for c in cmd[2:])


def run_consumer(python: str, name: str, path: Path, x: np.ndarray, work: Path):
    inp, out = work / f"{name}-in.npz", work / f"{name}-out.npz"
    np.savez(inp, x=x.astype(np.float32))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no project code there
    runner, extra = RUNNER.get(name, (name, []))
    p = subprocess.run([python, str(RUNNERS / f"{runner}.py"), str(path), str(inp), str(out),
                        *extra],
                       capture_output=True, text=True, env=env, timeout=900)
    notes = [ln for ln in p.stderr.splitlines() if ln.strip() and "Warning" not in ln]
    if p.returncode != 0:
        return None, notes
    with np.load(out) as z:
        return {k: z[k] for k in z.files}, notes


@handle_errors
def main(argv=None) -> int:
    p = ArgumentParser(prog="nir_consumers.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="default: the shipped mnist.pt")
    p.add_argument("--data-root", help="real MNIST test images (default: random inputs)")
    p.add_argument("--consumers", nargs="+", choices=list(CONSUMERS), default=list(CONSUMERS))
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--n", type=count, default=4, help="inputs per part (default 4)")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from export.nir_exec import Exported, GraphRunner
    from export.nir_graph import build_graph
    from export.targets import profile
    from spikediff import checkpoint

    model = checkpoint.load_model(a.checkpoint)
    ex = Exported(build_graph(model))
    xs = inputs(model, ex, a.n, a.data_root)
    rows = []
    with tempfile.TemporaryDirectory(prefix="nir-consumers-") as tmp:
        work = Path(tmp)
        for name in a.consumers:
            target, var = CONSUMERS[name]
            python = os.environ.get(var) if var else sys.executable
            profile(target)  # an unknown target stops here
            for part in a.parts:
                row = {"consumer": name, "part": part, "target": target}
                rows.append(row)
                if not python:
                    row["error"] = (f"no environment: SPIKEDIFF_CONSUMERS={target} source "
                                    "scripts/setup.sh")
                    continue
                path = work / f"{name}-{part}.nir"
                spiking = name in SPIKING_ONLY
                rc, row["export"] = export(a.checkpoint, target, part, spiking, path)
                if rc != 0:
                    row["error"] = "export failed"
                    continue
                import nir
                theirs, row["notes"] = run_consumer(python, name, path, xs[part].numpy(), work)
                if theirs is None:
                    row["error"] = (row["notes"] or ["failed without a message"])[-1]
                    continue
                # reference: our executor on the generic export (== the Norse model, spike
                # for spike, as --verify shows), LIF layers in order
                from export.nir_exec import topological_order
                generic = ex.runners[part].run(xs[part])
                sub = ex.subs[part]
                base = [n for n in topological_order(sub) if isinstance(sub.nodes[n], nir.LIF)]
                # a profile may say the network differently, never change it: where our
                # nir reads the profile's file, our executor on it gives the same spikes
                try:
                    try:
                        g = nir.read(str(path))
                    except ValueError:  # (1,)-shaped parameters for nir 1.0.4: no type check
                        g = nir.read(str(path), type_check=False)
                    ours = GraphRunner(g, dtype=torch.float64).run(xs[part])
                    mine = [n for n in topological_order(g) if isinstance(g.nodes[n], nir.LIF)]
                    row["profile_keeps_network"] = len(mine) == len(base) and all(
                        torch.equal(ours[m], generic[b]) for m, b in zip(mine, base))
                except Exception as e:  # e.g. a file for an older nir's reader
                    row["profile_keeps_network"] = f"not checked: {type(e).__name__}"
                layers = {}
                for node in base:
                    key = f"spikes/{node}"
                    if key not in theirs:
                        layers[node] = None  # the consumer dropped or hid this layer
                        continue
                    ref = generic[node].numpy()
                    got = theirs[key].reshape(ref.shape)
                    layers[node] = {"agree": float((got == ref).mean()),
                                    "spikes_ours": int(ref.sum()), "spikes_theirs": int(got.sum())}
                row["layers"] = layers
                agree = [v["agree"] for v in layers.values() if v is not None]
                row["min_agree"] = min(agree) if agree and len(agree) == len(layers) else None
    print(f"{'consumer':9s} {'part':9s} {'runs':5s} {'min agree':>10s}  per layer / error")
    for r in rows:
        if "error" in r:
            print(f"{r['consumer']:9s} {r['part']:9s} {'no':5s} {'-':>10s}  {r['error'][:90]}")
            continue
        per = ", ".join("dropped" if v is None else f"{100 * v['agree']:.2f}%"
                        for v in r["layers"].values())
        m = r["min_agree"]
        keeps = {True: "", False: "  (PROFILE CHANGED THE NETWORK)"}.get(
            r["profile_keeps_network"], f"  ({r['profile_keeps_network']})")
        print(f"{r['consumer']:9s} {r['part']:9s} {'yes':5s} "
              f"{'-' if m is None else f'{100 * m:.2f}%':>10s}  {per}{keeps}")
    if a.json:
        Path(a.json).write_text(json.dumps({"n": a.n, "real_inputs": bool(a.data_root),
                                            "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

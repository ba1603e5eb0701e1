"""sinabs 3.1 (`sinabs.from_nir`) on the exported model: loads / runs / spike agreement.

    SPIKEDIFF_CONSUMERS=sinabs source scripts/setup.sh       # once: sinabs' own environment
    python benchmarks/nir_consumer_sinabs.py                   # shipped checkpoint, B = 4
    python benchmarks/nir_consumer_sinabs.py --n 16 --json out.json --keep DIR

For each part (encoder, decoder, denoiser), the spiking-only form of the shipped export
(export.nir_exec.spiking_view: Input, Conv2d, LIF, Output) is written twice: as is
(generic) and through the sinabs profile (export/targets/sinabs.py, its `write`). Each
file runs in sinabs' own environment ($SPIKEDIFF_SINABS_PY,
benchmarks/nir_consumers/sinabs.py) on N inputs per part: random images in [0, 1]
minus 0.5, random one-hot code grids, random one-hot token grids at random steps
(export.nir_exec.Exported.denoiser_input). The reference is export.nir_exec.GraphRunner
on the generic file (float64), spike for spike the Norse model (`--verify`).

Per file, runner variant (as-loaded; single-spike; hard-reset: one spike and a reset to
0 set after loading) and LIF layer: the share of neuron-steps whose spike count equals
ours, and the most spikes one neuron emitted in a step.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spikediff.atomic import write_text  # noqa: E402
from spikediff.cliutil import ArgumentParser, at_least, check_outputs, handle_errors, seed  # noqa: E402
from spikediff.errors import SpikediffError  # noqa: E402

RUNNER = ROOT / "benchmarks" / "nir_consumers" / "sinabs.py"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "nir-consumer-sinabs.json"
PARTS = ("encoder", "decoder", "denoiser")
VARIANTS = ("as-loaded", "single-spike", "hard-reset")


def sinabs_python() -> str:
    py = os.environ.get("SPIKEDIFF_SINABS_PY")
    if not py or not Path(py).exists():
        raise SpikediffError("no sinabs environment: run `SPIKEDIFF_CONSUMERS=sinabs source "
                             "scripts/setup.sh` first (it sets SPIKEDIFF_SINABS_PY)")
    return py


def part_inputs(ex, n: int, generator) -> dict:
    """Contract inputs [T, B, ...] float64 per part."""
    import torch
    from export.nir_exec import repeat
    images = torch.rand(n, 1, 28, 28, generator=generator, dtype=torch.float64)
    codes = torch.randint(0, ex.K, (n, *ex.grid), generator=generator)
    tokens = torch.randint(0, ex.K + 1, (n, *ex.grid), generator=generator)
    t = torch.randint(1, ex.steps + 1, (n,), generator=generator)
    return {"encoder": repeat(images - 0.5, ex.T_vq), "decoder": ex.decoder_input(codes),
            "denoiser": ex.denoiser_input(tokens, t)}


def run_runner(py: str, path: Path, x, work: Path, variant: str):
    """(spike arrays, stderr lines, error or None)."""
    import numpy as np
    inp, out = work / "in.npz", work / f"out-{path.stem}-{variant}.npz"
    np.savez(inp, x=x.numpy().astype(np.float32))
    proc = subprocess.run([py, str(RUNNER), str(path), str(inp), str(out), "--variant", variant],
                          capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    if proc.returncode != 0:
        return {}, lines, (lines[-1] if lines else f"exit {proc.returncode}")
    data = np.load(out)
    return {k: data[k] for k in data.files}, lines, None


def measure(n: int = 4, seed_: int = 0, keep: Path | None = None) -> dict:
    import torch
    import nir
    from spikediff import checkpoint
    from export.nir_exec import Exported, GraphRunner, spiking_view
    from export.nir_graph import build_graph
    from export.targets import profile

    py = sinabs_python()
    target = profile("sinabs")
    graph = build_graph(checkpoint.load_model(None))
    ex = Exported(graph)
    x = part_inputs(ex, n, torch.Generator().manual_seed(seed_))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for part in PARTS:
            view = spiking_view(graph.nodes[part])
            ref = GraphRunner(view).run(x[part])
            files = {"generic": work / f"{part}-generic.nir", "sinabs": work / f"{part}-sinabs.nir"}
            nir.write(str(files["generic"]), view)
            target.write(target.adapt(view), files["sinabs"])
            for form, path in files.items():
                for variant in VARIANTS:
                    got, notes, error = run_runner(py, path, x[part], work, variant)
                    row = {"part": part, "file": form, "variant": variant, "error": error,
                           "changed": [ln for ln in notes if ln.startswith("changed:")],
                           "layers": {}}
                    for name, node in view.nodes.items():
                        if isinstance(node, nir.LIF) and not error:
                            have = torch.as_tensor(got[f"spikes/{name}"], dtype=torch.float64)
                            want = ref[name]
                            row["layers"][name] = {
                                "agree": float((have == want).double().mean()),
                                "most": int(have.max()), "spikes_ours": int(want.sum()),
                                "spikes_sinabs": int(have.sum())}
                    rows.append(row)
                    if error:
                        break  # the other variants load the same file
    return {"n": n, "seed": seed_, "inputs": "random images - 0.5, one-hot codes, one-hot "
            "token grids (contract inputs)", "rows": rows}


def format_rows(rows) -> str:
    out = []
    for r in rows:
        head = f"{r['part']:8s} {r['file']:7s} {r['variant']:12s}"
        if r["error"]:
            out.append(f"{head} {r['error']}")
            continue
        layers = ", ".join(f"{k} {100 * v['agree']:.2f}% (most {v['most']})"
                           for k, v in r["layers"].items())
        out.append(f"{head} {layers}")
    return "\n".join(out)


@handle_errors
def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=at_least(1), default=4, help="inputs per part (default 4)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--json", help=f"write the results here (default {DEFAULT_JSON.relative_to(ROOT)})")
    p.add_argument("--keep", help="keep the .nir files, inputs and sinabs' outputs here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    a = p.parse_args(argv)
    out = Path(a.json) if a.json else DEFAULT_JSON
    check_outputs([out], a.force or not a.json)
    res = measure(a.n, a.seed, Path(a.keep) if a.keep else None)
    print(format_rows(res["rows"]))
    write_text(out, json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

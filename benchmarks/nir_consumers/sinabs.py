"""Runs a flat NIR graph in sinabs (`sinabs.from_nir`) and records every LIF's spikes.

Runs under the sinabs consumer environment (requirements/consumer-sinabs.txt: sinabs
3.1.3, nir 1.0.4, nirtorch 2.0.2; `SPIKEDIFF_CONSUMERS=sinabs source scripts/setup.sh`
sets SPIKEDIFF_SINABS_PY). Imports no spikediff code.

    $SPIKEDIFF_SINABS_PY benchmarks/nir_consumers/sinabs.py FILE IN.npz OUT.npz [--variant V]

FILE: a flat graph (Input, Conv2d, LIF, Output), as export/targets/sinabs.py writes it.
IN.npz: "x", float32 [T, B, *input_shape]. OUT.npz: "spikes/NODE" for every LIF and
"output/NODE" for every Output, float32 [T, B, ...], as sinabs computed them: the file
read with nir.read, loaded with sinabs.from_nir(graph, batch_size=B), run one step at a
time for T steps from rest (sinabs' layers keep their state between calls), each node's
output taken by a forward hook on the module from_nir made for it.

--variant (default as-loaded) changes the loaded model, each change one line on stderr:
  as-loaded       nothing;
  single-spike    every LIF emits at most one spike per step (spike_fn = SingleSpike);
  hard-reset      that, and every LIF resets to 0 (reset_fn = MembraneReset()).
from_nir can be told neither. Errors: one line on stderr, exit code 1.
"""
from __future__ import annotations

import sys
from pathlib import Path

# This file is named sinabs.py: its own folder must not shadow the sinabs package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

VARIANTS = ("as-loaded", "single-spike", "hard-reset")


def run(path: str, x, variant: str = "as-loaded") -> dict:
    import warnings

    import nir
    import numpy as np
    import sinabs
    import sinabs.activation as sa
    import sinabs.layers as sl
    import torch
    from nirtorch.utils import sanitize_name

    warnings.simplefilter("ignore")  # nirtorch.load's DeprecationWarning
    try:
        graph = nir.read(path)
    except Exception as e:
        raise RuntimeError(f"nir.read: {type(e).__name__}: {e}") from None
    if any(isinstance(n, nir.NIRGraph) for n in graph.nodes.values()):
        raise RuntimeError("the file holds nested graphs: give one flat part")
    T, B = x.shape[:2]
    try:
        model = sinabs.from_nir(graph, batch_size=B)
    except Exception as e:
        raise RuntimeError(f"{type(e).__name__}: {e}") from None
    lifs = [m for m in model.modules() if isinstance(m, sl.LIF) and m.spike_fn is not None]
    if variant in ("single-spike", "hard-reset"):
        for m in lifs:
            m.spike_fn = sa.SingleSpike
        print(f"changed: spike_fn = SingleSpike on {len(lifs)} LIF layers", file=sys.stderr)
    if variant == "hard-reset":
        for m in lifs:
            m.reset_fn = sa.MembraneReset(reset_value=0.0)
        print(f"changed: reset_fn = MembraneReset() on {len(lifs)} LIF layers", file=sys.stderr)
    keys = {}
    for name, node in graph.nodes.items():
        if isinstance(node, nir.LIF):
            keys[sanitize_name(name)] = f"spikes/{name}"
        elif isinstance(node, nir.Output):
            keys[sanitize_name(name)] = f"output/{name}"
    steps: dict[str, list] = {k: [] for k in keys.values()}
    modules = dict(model.named_children())
    for key, out_key in keys.items():
        if key not in modules:
            raise RuntimeError(f"from_nir made no module for node '{out_key.split('/', 1)[1]}'")
        modules[key].register_forward_hook(
            lambda m, args, out, k=out_key: steps[k].append(out.detach().float().clone()))
    for m in model.modules():  # from rest
        if isinstance(m, sl.StatefulLayer):
            m.reset_states()
    with torch.no_grad():
        for t in range(T):
            model(torch.as_tensor(np.asarray(x[t], dtype=np.float32)))
    out = {}
    for k, seq in steps.items():
        if len(seq) != T:
            raise RuntimeError(f"node '{k.split('/', 1)[1]}' ran {len(seq)} times in {T} steps")
        out[k] = torch.stack(seq).numpy()
    return out


def main(argv=None) -> int:
    import argparse

    import numpy as np
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("inputs")
    p.add_argument("out")
    p.add_argument("--variant", choices=VARIANTS, default="as-loaded")
    a = p.parse_args(argv)
    try:
        x = np.load(a.inputs)["x"]
        out = run(a.file, x, a.variant)
    except Exception as e:
        print(f"error: sinabs from_nir: {e}".splitlines()[0], file=sys.stderr)
        return 1
    np.savez(a.out, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

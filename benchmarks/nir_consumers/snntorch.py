"""snnTorch 1.0 as a NIR consumer: `snntorch.import_nir.import_from_nir`.

    python benchmarks/nir_consumers/snntorch.py FILE IN.npz OUT.npz

snnTorch builds its network with nirtorch 2.6's nir_to_torch; its LIF is `snn.Leaky`
with init_hidden=True (state kept inside the module), so one call is one step.
snnTorch assumes dt = 1e-4 s whatever the file says: read a file written with
`--target snntorch` (export/targets/snntorch.py), which states the same network at that dt.
"""
import importlib.util
import sys
from pathlib import Path

import nir

# This file's folder holds nirtorch.py and snntorch.py: off sys.path, or they would
# shadow the packages of the same names. torch_common is loaded by path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.util.spec_from_file_location("nir_consumers_torch_common",
                                               _HERE / "torch_common.py")
tc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tc)

SNNTORCH_DT = 1e-4


def build(graph: nir.NIRGraph):
    from snntorch.import_nir import import_from_nir
    dt = graph.metadata.get("dt")
    if dt is not None and abs(float(dt) - SNNTORCH_DT) > 1e-12:
        print(f"note: the file says dt = {dt}; snnTorch 1.0 assumes dt = {SNNTORCH_DT} "
              "(write it with --target snntorch)", file=sys.stderr)
    kept = tc.one_output(graph)
    net = import_from_nir(kept)
    return net, tc.modules_by_node(graph, net), tc.fx_step(net, kept)


if __name__ == "__main__":
    sys.exit(tc.main(sys.argv[1:], "snntorch import_from_nir", build))

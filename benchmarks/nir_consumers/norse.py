"""Norse 1.1.0 as a NIR consumer: `norse.torch.from_nir`.

    python benchmarks/nir_consumers/norse.py FILE IN.npz OUT.npz

Norse maps NIR LIF to `LIFBoxCell` (forward Euler at from_nir's `dt` argument, default
1e-3; v_leak and v_threshold from the node; r and v_reset ignored) and runs the graph with
nirtorch's deprecated GraphExecutor (`nirtorch.load`). The runner passes the file's
metadata dt as from_nir's documented `dt` argument.
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


def build(graph: nir.NIRGraph):
    from norse.torch import from_nir
    kw = {"dt": float(graph.metadata["dt"])} if "dt" in graph.metadata else {}
    net = from_nir(graph, **kw)

    def step(x, state):
        return net(x, state)  # GraphExecutor: (last node's output, GraphExecutorState)
    return net, tc.modules_by_node(graph, net), step


if __name__ == "__main__":
    sys.exit(tc.main(sys.argv[1:], "norse from_nir", build))

"""nirtorch 2.6's own executor (`nirtorch.nir_to_torch`) with a LIF written from the NIR spec.

    python benchmarks/nir_consumers/nirtorch.py FILE IN.npz OUT.npz

This is the generic torch path a chip team would write: nirtorch maps Input, Output and
Conv2d itself; the LIF module below is the NIR definition `tau dv/dt = (v_leak - v) + r I`
integrated with forward Euler at the file's metadata dt, spike when v > v_threshold, then
v = v_reset. Everything else (wiring, summing edges, state) is nirtorch's.
"""
import importlib.util
import sys
from pathlib import Path

import nir
import numpy as np
import torch

# This file's folder holds nirtorch.py and snntorch.py: off sys.path, or they would
# shadow the packages of the same names. torch_common is loaded by path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.util.spec_from_file_location("nir_consumers_torch_common",
                                               _HERE / "torch_common.py")
tc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tc)


class SpecLIF(torch.nn.Module):
    def __init__(self, node: nir.LIF, dt: float):
        super().__init__()
        for k in ("tau", "r", "v_leak", "v_threshold", "v_reset"):
            self.register_buffer(
                k, torch.as_tensor(np.asarray(getattr(node, k)), dtype=torch.float32))
        self.dt = dt

    def forward(self, x, state=None):
        v = torch.zeros_like(x) if state is None else state
        v = v + self.dt / self.tau * (self.v_leak - v + self.r * x)
        z = (v > self.v_threshold).to(x.dtype)
        v = torch.where(z > 0, self.v_reset.expand_as(v), v)
        return z, v


def build(graph: nir.NIRGraph):
    import nirtorch
    if "dt" not in graph.metadata:
        raise tc.RunnerError("the graph has no 'dt' in its metadata: the NIR LIF is a "
                             "continuous-time ODE and needs a step to integrate with")
    dt = float(graph.metadata["dt"])
    kept = tc.one_output(graph)
    net = nirtorch.nir_to_torch(kept, {nir.LIF: lambda n: SpecLIF(n, dt)})
    return net, tc.modules_by_node(graph, net), tc.fx_step(net, kept)


if __name__ == "__main__":
    sys.exit(tc.main(sys.argv[1:], "nirtorch nir_to_torch", build))

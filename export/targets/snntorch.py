"""snnTorch 1.0 (`snntorch.import_nir.import_from_nir`): the same network at its dt = 1e-4 s."""
import copy

import nir
import numpy as np

NAME = "snntorch"
DESCRIPTION = "snnTorch 1.0 import_from_nir: every time constant restated at its fixed dt = 0.1 ms"
DIFFERENCES = (
    "snnTorch 1.0 ignores the file's dt and assumes dt = 1e-4 s: a LIF becomes snn.Leaky with "
    "beta = 1 - 1e-4/tau and threshold v_threshold / (r*1e-4/tau) (it integrates r*dt/tau*I "
    "into v/(r*dt/tau)); as written at dt = 1 ms (beta 0.95, threshold 20) it fires almost "
    "nothing (measured on the shipped checkpoint: 0-1.6 % of steps instead of 7-39 %). This profile restates every tau at dt = 1e-4 (same per-step "
    "system; metadata dt = 1e-4), after which its spikes equal export/nir_exec.py's on every "
    "spiking layer (measured: tiny model and the shipped checkpoint, encoder, decoder and "
    "denoiser). It ignores v_reset (always resets to 0: ours is 0), refuses v_leak != 0 and "
    "per-neuron thresholds, and cannot import LI or I nodes ('Unknown node type'): the "
    "readouts must be run on the host, or the file cut before them. Like every "
    "nirtorch.nir_to_torch user it never returns on a graph with two Output nodes and returns "
    "an Output's incoming edges unsummed."
)

# what its import can take: LI/I readout nodes (else the spiking form is written),
# nested part subgraphs (else one --part per file)
READS_READOUTS = False
READS_NESTED = False


SNNTORCH_DT = 1e-4


def restate_dt(graph: nir.NIRGraph, new_dt: float, dt: float | None = None) -> nir.NIRGraph:
    """A copy of `graph` (and its nested subgraphs) stating the same per-step network at
    step `new_dt`: tau scaled by new_dt/dt (LIF, LI), r by dt/new_dt (I, IF), metadata dt =
    new_dt. A graph without a dt of its own uses its parent's (`dt`); none: left as is."""
    g = copy.copy(graph)
    g.metadata = dict(graph.metadata)
    here = float(g.metadata["dt"]) if "dt" in g.metadata else dt
    nodes = {}
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            nodes[name] = restate_dt(node, new_dt, here)
            continue
        timed = (nir.LIF, nir.LI, nir.I, nir.IF, nir.CubaLIF, nir.CubaLI, nir.Delay)
        if here is not None and isinstance(node, timed) and new_dt != here:
            k = new_dt / here
            node = copy.deepcopy(node)
            if isinstance(node, (nir.LIF, nir.LI)):
                node.tau = np.asarray(node.tau) * k      # dt/tau and r*dt/tau unchanged
            elif isinstance(node, (nir.I, nir.IF)):
                node.r = np.asarray(node.r) / k          # dt*r unchanged
            elif isinstance(node, nir.Delay):
                node.delay = np.asarray(node.delay) * k  # the same number of steps
            else:
                node.tau_syn = np.asarray(node.tau_syn) * k
                node.tau_mem = np.asarray(node.tau_mem) * k
        nodes[name] = node
    g.nodes = nodes
    if here is not None:
        g.metadata["dt"] = float(new_dt)
    return g


def adapt(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The same discrete-time network stated at dt = 1e-4 s (metadata dt updated)."""
    return restate_dt(graph, SNNTORCH_DT)

"""Norse 1.1.0 (`norse.torch.from_nir`): the graph as written."""
import nir

NAME = "norse"
DESCRIPTION = "Norse 1.1 from_nir: the graph as written (dt 1 ms is its default dt)"
DIFFERENCES = (
    "Norse 1.1.0 maps a LIF to LIFBoxCell (forward Euler at from_nir's dt argument, default "
    "1e-3 = ours; spike if v > v_threshold; reset to 0): the same update as ours, and its "
    "spikes equal export/nir_exec.py's on every spiking layer (measured: tiny model and the "
    "shipped checkpoint, encoder, decoder and denoiser). It ignores r (warns when r != 1) "
    "and v_reset (always 0); ours are 1 and 0. It has no mapping for LI or I: a graph with a "
    "readout fails with a KeyError on the node's name (encoder) or silently loses it "
    "(decoder). It runs the graph with nirtorch's deprecated GraphExecutor, which orders nodes "
    "depth-first from the input: a node with two incoming edges whose second source comes "
    "later in that order (the denoiser's head.first) is computed with that source's value from "
    "the previous step (zero at the first), and only the last node's output is returned. "
    "Node names with '.' are fine (renamed '_' consistently)."
)


def adapt(graph: nir.NIRGraph) -> nir.NIRGraph:
    return graph

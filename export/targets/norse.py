"""Norse 1.1.0 (`norse.torch.from_nir`): the graph as written."""
import nir

from .snntorch import restate_dt

NAME = "norse"
DESCRIPTION = "Norse 1.1 from_nir: time constants stated at its default dt = 1 ms (ours already)"
DIFFERENCES = (
    "Norse 1.1.0 maps a LIF to LIFBoxCell (forward Euler at from_nir's dt argument, default "
    "1e-3 = ours; spike if v > v_threshold; reset to 0): the same update as ours, and its "
    "spikes equal export/nir_exec.py's on every spiking layer (measured: tiny model and the "
    "shipped checkpoint, encoder, decoder and denoiser). By its source it ignores r (warns "
    "when r != 1) and v_reset (always 0); ours are 1 and 0. It has no mapping for LI or I: "
    "with two of them (encoder) from_nir fails with KeyError 'readout_psp'; with one it "
    "silently runs without it (measured: the decoder's Output is the readout conv's current, "
    "not its leaky integral; the denoiser's Output is head.first alone). It runs the graph "
    "with nirtorch's deprecated GraphExecutor, which orders nodes depth-first from the input, "
    "not topologically: a node with two incoming edges whose second source comes later in "
    "that order gets that source's value from the previous step (zero at the first); "
    "measured on the denoiser without its readout, logits = head.last + head.first one step "
    "late. No LIF of ours follows a join, so all spikes still match. A call returns the "
    "output of the node last in that order, not necessarily an Output node. Node names "
    "with '.' are fine (renamed '_' consistently)."
)

# what its import can take: LI/I readout nodes (else the spiking form is written),
# nested part subgraphs (else one --part per file)
READS_READOUTS = False
READS_NESTED = False



NORSE_DT = 1e-3  # from_nir's default dt


def adapt(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The same network stated at from_nir's default dt = 1e-3 s (ours already is), so that
    `from_nir(graph)` without a dt argument runs it as written."""
    return restate_dt(graph, NORSE_DT)

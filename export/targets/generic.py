"""The project's own form: any NIR reader that follows the file's metadata (dt, T, rules)."""
import nir

NAME = "generic"
DESCRIPTION = "the graph as the metadata describes it (dt 1 ms, forward Euler, hard reset)"
DIFFERENCES = "none: export/nir_exec.py runs it spike for spike"

# what its import can take: LI/I readout nodes (else the spiking form is written),
# nested part subgraphs (else one --part per file)
READS_READOUTS = True
READS_NESTED = True



def adapt(graph: nir.NIRGraph) -> nir.NIRGraph:
    return graph


def write(graph: nir.NIRGraph, path) -> None:
    """nir.write (nir >= 1.0.5 reads it; export.nir_graph.write says why not 1.0.4)."""
    from export.nir_graph import write as write_nir
    write_nir(graph, path)

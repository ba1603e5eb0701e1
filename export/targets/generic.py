"""The project's own form: any NIR reader that follows the file's metadata (dt, T, rules)."""
import nir

NAME = "generic"
DESCRIPTION = "the graph as the metadata describes it (dt 1 ms, forward Euler, hard reset)"
DIFFERENCES = "none: export/nir_exec.py runs it spike for spike"


def adapt(graph: nir.NIRGraph) -> nir.NIRGraph:
    return graph

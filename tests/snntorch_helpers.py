"""snnTorch as a third-party NIR importer, for the export tests (not project code)."""
import torch


@torch.no_grad()
def run_snntorch(sub, x: torch.Tensor) -> torch.Tensor:
    """Run a flat spiking graph with snnTorch's import_from_nir on x [T, B, ...] (float32)."""
    import contextlib
    import io
    import warnings
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        from snntorch.import_nir import import_from_nir
        net = import_from_nir(sub)
        out = []
        for xt in x.float():
            y = net(xt)
            out.append(y[0] if isinstance(y, tuple) else y)
    return torch.stack(out)

"""netx export: lava-dl's netx.hdf5.Network loads it and runs to the same spikes as our mapper.

netx runs in fixed point, so the export is quantised (one power-of-two scale per
block). The comparison target is our NIR->Lava mapper (floating_pt) on the same
quantised network (``reference_graph``): identical spikes, at the same lag (one
step per block). Against the unquantised float graph only the agreement is checked.
"""
import os
import subprocess

import nir
import numpy as np
import pytest
import torch

from spikediff.errors import SpikediffError
from spikediff.model import active_random_model
from hardware import backends as B
from hardware.lava.client import LavaUnavailableError, LavaWorker, find_lava_python
from export.netx import NetxExportError, export, export_netx, quantise

try:
    LAVA_PY = find_lava_python()
except LavaUnavailableError:
    LAVA_PY = None
needs_lava = pytest.mark.needs_lava  # skipped without the Lava env: tests/conftest.py
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_nir(tmp_path_factory):
    m = active_random_model("tiny", 0)
    return B.export_to(m, tmp_path_factory.mktemp("netx") / "tiny.nir")


def test_refusals_and_cli_export(tiny_nir, tmp_path):
    with pytest.raises(NetxExportError, match="analog image currents"):
        export_netx(tiny_nir, tmp_path / "enc.net", "encoder")
    msg = export(tiny_nir, tmp_path / "out")
    assert (tmp_path / "out" / "decoder.net").is_file() and (tmp_path / "out" / "denoiser.net").is_file()
    assert "not exported: encoder" in msg and "left out" in msg
    with pytest.raises(SpikediffError, match="decoder.net exists; pass --force"):
        export(tiny_nir, tmp_path / "out")


@needs_lava
@pytest.mark.parametrize("part", ["decoder", "denoiser"])
def test_netx_runs_to_mapper_spikes(part, tiny_nir, tmp_path):
    from export.nir_exec import Exported
    info = export_netx(tiny_nir, tmp_path / f"{part}.net", part)
    ref = tmp_path / "ref.nir"
    nir.write(str(ref), info["reference_graph"])
    ex = Exported.read(tiny_nir)
    g = torch.Generator().manual_seed(0)
    if part == "decoder":
        x = ex.decoder_input(torch.randint(0, ex.K, (1, *ex.grid), generator=g))
    else:
        x = ex.denoiser_input(torch.randint(0, ex.K + 1, (1, *ex.grid), generator=g),
                              torch.tensor([5]))
    x = x.numpy()
    names = [lay["name"] for lay in info["layers"]]
    with LavaWorker() as lw:
        q = lw.run(str(ref), None, {"input": x}, "floating_pt", names)
        full = lw.run(str(tiny_nir), part, {"input": x}, "floating_pt", names)
    np.save(tmp_path / "in.npy", x[:, 0])
    steps = x.shape[0] + len(names)
    # the Lava env runs the netx file (tests/netx_run.py: numpy and lava only)
    r = subprocess.run([LAVA_PY, "-s", os.path.join(REPO, "tests", "netx_run.py"),
                        str(tmp_path / f"{part}.net"), str(tmp_path / "in.npy"), str(steps),
                        str(tmp_path / "out.npz")], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    T = x.shape[0]
    for i, name in enumerate(names):
        lag = q.lags[name]
        assert lag == i + 1
        netx_spikes = out[f"block{i}"][lag:lag + T]
        assert netx_spikes.sum() > 0
        np.testing.assert_array_equal(netx_spikes, q.aligned(name)[:, 0], err_msg=name)
        agree = float((netx_spikes == full.aligned(name)[:, 0]).mean())
        assert agree > 0.9, (name, agree)   # quantisation vs the float graph


def test_netx_quantises_with_the_mappings_fixed_point_rules():
    """One fixed-point module: a block's scale is the largest power of two that keeps
    weights, input sum, bias and threshold within export.fixed_point's bit widths."""
    from export import fixed_point as fp
    rng = np.random.default_rng(0)
    W, b = rng.normal(0, 0.3, (4, 3, 3, 3)), rng.normal(0, 0.05, 4)
    q = quantise(dict(W=W, b=b, a=0.5, r=1.0, vth=1.0))
    assert q["S"] == fp.pow2_floor(q["S"])
    assert np.abs(q["Wq"]).max() <= fp.WEIGHT_MAX_MIXED and np.abs(q["bq"]).max() <= fp.BIAS_MANT_MAX
    assert (np.abs(W).reshape(4, -1).sum(1).max() + np.abs(b).max()) * q["S"] <= fp.A_IN_LIMIT
    assert q["vth_mant"] <= fp.V_LIMIT and q["vdecay"] == fp.DECAY_UNIT // 2
    np.testing.assert_array_equal(q["Wq"], fp.to_int(W, q["S"]))
    # twice the scale would break one of the limits
    S2 = 2 * q["S"]
    assert (np.abs(W).max() * S2 > fp.WEIGHT_MAX_MIXED or np.abs(b).max() * S2 > fp.BIAS_MANT_MAX
            or (np.abs(W).reshape(4, -1).sum(1).max() + np.abs(b).max()) * S2 > fp.A_IN_LIMIT)


def test_netx_takes_dt_from_the_graph(tiny_nir):
    """The LIF decay is dt/tau with the graph's own dt (metadata), as on the Lava worker."""
    from export.netx import _chain
    g = nir.read(str(tiny_nir))
    sub = g.nodes["decoder"]
    _, layers = _chain(sub)
    lif = sub.nodes[layers[0]["name"]]
    assert layers[0]["a"] == float(sub.metadata["dt"]) / float(np.asarray(lif.tau).flat[0])
    del sub.metadata["dt"]
    with pytest.raises(NetxExportError, match="dt"):
        _chain(sub)

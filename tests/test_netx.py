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

from spikediff.model import active_random_model
from hardware import backends as B
from hardware.lava.client import LavaUnavailableError, LavaWorker, find_lava_python
from hardware.lava.netx_export import NetxExportError, export, export_netx

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
    with pytest.raises(NetxExportError, match="--force"):
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
    r = subprocess.run([LAVA_PY, "-m", "hardware.lava.netx_export", "run",
                        str(tmp_path / f"{part}.net"), str(tmp_path / "in.npy"), str(steps),
                        str(tmp_path / "out.npz")], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
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

"""Every implementation of the LIF neuron, driven by the same currents, spikes the same.

Implementations: the Norse model (`spikediff.neuron.LIF`, float32 and float64),
`spikediff.neuron.lif_run` (what the ONNX writer unrolls), the ONNX graph of it
run by onnxruntime, the NIR executor (`export.nir_exec.GraphRunner`) on the
exported LIF node, and Lava (floating_pt and fixed_pt, through the worker
client, as `spikediff-run --backend lava` uses it). The SPEC's own equation is
the reference.

Currents are multiples of 1/16 in [-1, 3) plus constant drives that hit the
threshold exactly: with leak 1/2 every membrane value is then an exact dyadic
number in any of these expression orders, so the spikes must agree bit for bit
and the strict `v > 1` must be the same everywhere (x = 2 reaches v = 1.0 and
must not spike at that step).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from export.nir_exec import GraphRunner  # noqa: E402
from export.nir_graph import lif_node  # noqa: E402
from spikediff.neuron import DT, LIF, lif_run  # noqa: E402

T, N = 12, 48


def spec_lif(x: np.ndarray) -> np.ndarray:
    """SPEC: v <- v + (x - v) / 2, spike when v > 1, hard reset to 0."""
    v = np.zeros_like(x[0])
    out = []
    for xt in x:
        v = v + (xt - v) / 2
        s = v > 1
        v = np.where(s, 0.0, v)
        out.append(s)
    return np.stack(out).astype(np.float64)


@pytest.fixture(scope="module")
def currents() -> np.ndarray:
    """[T, N] float64: random dyadic currents, then four columns of constant drive."""
    rng = np.random.default_rng(0)
    x = np.round(rng.uniform(-1, 3, size=(T, N)) * 16) / 16
    x[:, -4:] = [2.0, 1.6, 3.0, 0.5]  # tie at v = 1, every 2nd step, every step, never
    return x


@pytest.fixture(scope="module")
def expected(currents) -> np.ndarray:
    s = spec_lif(currents)
    # not vacuous: some neurons fire, some stay silent, and the tie column
    # (v = 1.0 at step 0, 1.5 at step 1) fires at step 1, not step 0
    assert 0.1 < s.mean() < 0.9
    assert s[:4, -4].tolist() == [0, 1, 0, 1] and s[:, -1].sum() == 0
    return s


def lif_graph(n: int) -> nir.NIRGraph:
    """Input -> identity synapse -> the model's LIF node (export.nir_graph.lif_node) -> Output.
    The identity Affine is there because Lava feeds neurons through synapses."""
    nodes = {
        "input": nir.Input(input_type={"input": np.array([n])}),
        "synapse": nir.Affine(weight=np.eye(n), bias=np.zeros(n)),
        "lif": lif_node((n,)),
        "output": nir.Output(output_type={"output": np.array([n])}),
    }
    edges = [("input", "synapse"), ("synapse", "lif"), ("lif", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT, "T": T})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_norse_model(currents, expected, dtype):
    got = LIF()(torch.from_numpy(currents).to(dtype))
    np.testing.assert_array_equal(got.double().numpy(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lif_run(currents, expected, dtype):
    got = torch.stack(lif_run(list(torch.from_numpy(currents).to(dtype))))
    np.testing.assert_array_equal(got.double().numpy(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nir_executor(currents, expected, dtype):
    vals = GraphRunner(lif_graph(N), dtype=dtype).run(torch.from_numpy(currents)[:, None])
    np.testing.assert_array_equal(vals["lif"][:, 0].double().numpy(), expected)
    np.testing.assert_array_equal(vals["output"][:, 0].double().numpy(), expected)


def test_onnx(currents, expected, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import warnings

    class Unrolled(torch.nn.Module):  # what export/onnx_export.py writes per layer
        def forward(self, x):
            return torch.stack(lif_run([x[t] for t in range(T)]))

    path = tmp_path / "lif.onnx"
    x = torch.from_numpy(currents).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Unrolled(), (x,), str(path), input_names=["x"], output_names=["z"],
                          opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    np.testing.assert_array_equal(got.astype(np.float64), expected)


@pytest.fixture(scope="module")
def lava_worker():
    from hardware.lava.client import LavaUnavailableError, LavaWorker
    try:
        w = LavaWorker(timeout=180)
    except LavaUnavailableError as e:
        pytest.skip(f"no Lava env: {str(e).splitlines()[0]}")
    with w:
        yield w


@pytest.mark.parametrize("mode", ["floating_pt", "fixed_pt"])
def test_lava(currents, expected, lava_worker, tmp_path, mode):
    path = tmp_path / "lif.nir"
    nir.write(str(path), lif_graph(N))
    res = lava_worker.run(str(path), None, {"input": currents[:, None]}, mode, ["lif"])
    np.testing.assert_array_equal(res.aligned("lif")[:, 0].astype(np.float64), expected)

"""Host I/O processes of a LavaNet and their process models (Lava environment).

Lava's Var.get/.set move large arrays element by element (measured: ~10 s for
3 x 88k values), so inputs and recordings go through .npy files that the
process models read/write themselves, once per call of ``steps`` time steps
(the runtime returns from run() after the last step).  Each process has a
floating_pt and a fixed_pt model (24-bit integer ports).
"""

from __future__ import annotations

import os

import numpy as np

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort, PyRefPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort, RefPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from export.fixed_point import GRADED_BITS, V_BITS


def save_atomic(path, arr):
    tmp = path + ".tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)


class FileSource(AbstractProcess):
    """Sends column k of the [n, steps] array in `path` at step k of each call."""

    def __init__(self, *, shape, steps, path):
        super().__init__(shape=shape, steps=steps, path=path)
        self.s_out = OutPort(shape=shape)


class FileSink(AbstractProcess):
    """Records its input each step; writes [n, steps] to `path` at the last step of a call."""

    def __init__(self, *, shape, steps, path):
        super().__init__(shape=shape, steps=steps, path=path)
        self.a_in = InPort(shape=shape)


class VarProbe(AbstractProcess):
    """Reads a Var (a neuron's v) after every step; writes [n, steps] to `path` per call."""

    def __init__(self, *, var, steps, path):
        super().__init__(shape=var.shape, steps=steps, path=path)
        self.ref = RefPort(var.shape)
        self.ref.connect_var(var)


class _SourceModel(PyLoihiProcessModel):
    def run_spk(self):
        steps = self.proc_params["steps"]
        k = (self.time_step - 1) % steps
        if k == 0 or getattr(self, "_data", None) is None:
            self._data = np.load(self.proc_params["path"])
        self.s_out.send(self._data[:, k])


@implements(proc=FileSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyFileSourceFloat(_SourceModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)


@implements(proc=FileSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyFileSourceFixed(_SourceModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=GRADED_BITS)


class _StepBuffer:
    """Collects one vector per time step and saves the [n, steps] block once per call."""

    def _record(self, x):
        steps = self.proc_params["steps"]
        k = (self.time_step - 1) % steps
        if k == 0 or getattr(self, "_buf", None) is None:
            self._buf = np.zeros((x.shape[0], steps), dtype=np.float64)
        self._buf[:, k] = x
        if k == steps - 1:
            save_atomic(self.proc_params["path"], self._buf)


class _SinkModel(_StepBuffer, PyLoihiProcessModel):
    def run_spk(self):
        self._record(self.a_in.recv())


@implements(proc=FileSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyFileSinkFloat(_SinkModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)


@implements(proc=FileSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyFileSinkFixed(_SinkModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=GRADED_BITS)


class _ProbeModel(_StepBuffer, PyLoihiProcessModel):
    def post_guard(self):
        return True

    def run_post_mgmt(self):
        self._record(np.asarray(self.ref.read(), dtype=np.float64).reshape(-1))


@implements(proc=VarProbe, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyVarProbeFloat(_ProbeModel):
    ref: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, float)


@implements(proc=VarProbe, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyVarProbeFixed(_ProbeModel):
    ref: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, np.int32, precision=V_BITS)

"""Test helper, run by the Lava environment's python (Python 3.10, numpy and lava only):

    $SPIKEDIFF_LAVA_PY tests/netx_run.py NET IN.npy STEPS OUT.npz

Runs a netx hdf5 network (lava-dl's netx.hdf5.Network, fixed_pt) on one sample
IN.npy [T, C, H, W] (binary spikes) for STEPS steps and writes each block's
spikes as block0, block1, ... [STEPS, C, H, W] (uint8, Lava's own timing).
"""
import sys

import numpy as np


def run_netx(net_path: str, x: np.ndarray, steps: int) -> list:
    """Each block's spikes [steps, C, H, W] of the netx network at net_path on x."""
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    # LIFReset per block at its input's first step (block i: Lava step i + 2), as our
    # mapper does: otherwise the bias integrates alone for the steps before the
    # (delayed) input arrives.
    net = netx.hdf5.Network(net_config=net_path, reset_interval=steps, reset_offset=1)
    T = x.shape[0]
    data = np.zeros((*x.shape[1:][::-1], steps), dtype=np.int32)   # (W, H, C, steps)
    data[..., :T] = np.transpose(x, (0, 3, 2, 1)).transpose(1, 2, 3, 0)
    src = Source(data=data)
    src.s_out.connect(net.inp)
    sinks = []
    for blk in net.layers:
        k = Sink(shape=blk.out.shape, buffer=steps)
        blk.out.connect(k.a_in)
        sinks.append(k)
    net.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    try:
        out = [np.asarray(k.data.get()) for k in sinks]       # (W, H, C, steps)
    finally:
        net.stop()
    return [np.transpose(o, (3, 2, 1, 0)) != 0 for o in out]  # [steps, C, H, W]


def main(argv) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    outs = run_netx(argv[0], np.load(argv[1]), int(argv[2]))
    np.savez(argv[3], **{f"block{i}": o.astype(np.uint8) for i, o in enumerate(outs)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

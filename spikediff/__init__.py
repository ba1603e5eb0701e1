"""spikediff: Spiking-Diffusion in Norse, exportable to NIR and Lava."""
import os

# libgomp's default busy-waiting makes a 2-thread torch op 50x slower whenever
# another process holds a core (seen on 2-core machines: 0.3 ms -> 24 ms per
# small conv). Passive waiting costs little when the machine is idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

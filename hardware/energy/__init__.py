"""Energy estimates of Spiking-Diffusion from its real spike activity (SPEC section 6).

counting: exact per-layer operation counts from recorded spikes (and the
Recorder that records them on the Norse model); lava: the same counts from
spikes recorded on Lava (--backend lava); constants: the energy table;
report: aggregation, ANN comparison, table, JSON and plot; cli: spikediff-energy.
"""

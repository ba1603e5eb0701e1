"""Run spikediff's NIR graphs on Lava (Loihi simulation) in a separate Python 3.10 process.

Two sides: ``client`` (main environment, Python 3.11, never imports Lava) starts
and talks to ``worker``, a package of its own that runs in the Lava
environment and imports only Lava, numpy, scipy, nir and export.fixed_point
(``worker.plan`` turns a NIR graph into a layer plan without Lava). This file
stays import-free: the worker imports it too.
"""

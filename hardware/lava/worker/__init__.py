"""The Lava worker (Python 3.10 Lava environment): ``python -m hardware.lava.worker``.

Imports only the standard library, numpy, scipy, nir, lava and
export.fixed_point; the client (hardware.lava.client) stages this folder,
export/fixed_point.py and the two parent ``__init__`` files into a private
folder and runs it from there.  By job:

* ``plan``: NIR graph -> layer plan (no Lava; importable and testable anywhere)
* ``quantise``: the plan's fixed-point scales, biases and weight parts (no Lava)
* ``network``: the Lava process graph of a plan (LavaNet)
* ``processes``: the file-backed input/recording processes and their models
* ``__main__``: the request loop (protocol in its docstring)
"""

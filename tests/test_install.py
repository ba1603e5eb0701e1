"""The Lava worker runs apart from the installing environment.

After `pip install .` the `hardware` package lives in the main env's
site-packages, next to numpy etc. built for Python 3.11; the Python 3.10 worker
must import none of that, nor anything on the caller's PYTHONPATH.
"""

import glob
import os
import shutil
import site
import subprocess
import sys
import time

import pytest

from hardware.lava.client import REPO, LavaUnavailableError, LavaWorker, find_lava_python

try:
    LAVA_PY = find_lava_python()
except LavaUnavailableError:
    LAVA_PY = None

needs_lava = pytest.mark.needs_lava  # skipped without the Lava env: tests/conftest.py


def _real(p):
    return os.path.realpath(p or os.getcwd())


def _under(p, root):
    p, root = _real(p), _real(root)
    return p == root or p.startswith(root.rstrip(os.sep) + os.sep)


@needs_lava
def test_worker_sys_path_is_isolated(tmp_path, monkeypatch):
    caller = tmp_path / "caller_path"
    caller.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(caller), REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    pythonpath = [p for p in os.environ["PYTHONPATH"].split(os.pathsep) if p]
    main_dirs = site.getsitepackages() + [site.getusersitepackages(), sys.prefix]

    w = LavaWorker(timeout=60).start()
    try:
        rep = w.request("syspath")
        tmp = w.tmp
    finally:
        w.close()
    for entry in rep["sys_path"]:
        for d in main_dirs:
            assert not _under(entry, d), f"worker sys.path has {entry!r} from the main env ({d})"
        for p in pythonpath:
            assert _real(entry) != _real(p), f"worker sys.path has the caller's PYTHONPATH entry {p!r}"
    mods = rep["modules"]
    assert {"hardware.lava.worker.plan", "hardware.lava.worker.network",
            "export.fixed_point"} <= set(mods), sorted(mods)
    for name, f in mods.items():
        if name.startswith(("hardware", "export")):
            assert _under(f, tmp), f"{name} imported from {f}, not the worker's private copy"
        else:
            assert not any(_under(f, d) for d in main_dirs), f"{name} imported from the main env: {f}"
    # its temporary files (the mapper's folders) go into that folder as well
    assert _under(rep["tmpdir"], tmp), rep["tmpdir"]
    assert not os.path.exists(tmp), "the worker's private folder outlives close()"


def _copy_numpy(dst_site):
    """The main env's numpy, copied as a real `pip install .` would put a cp311 numpy there."""
    import numpy
    src_site = os.path.dirname(os.path.dirname(numpy.__file__))
    for name in ["numpy", "numpy.libs"] + [os.path.basename(p) for p in
                                           glob.glob(os.path.join(src_site, "numpy-*.dist-info"))]:
        if os.path.isdir(os.path.join(src_site, name)):
            shutil.copytree(os.path.join(src_site, name), os.path.join(dst_site, name),
                            ignore=shutil.ignore_patterns("__pycache__", "tests"))
    return src_site


@needs_lava
def test_wheel_install_runs_lava(tmp_path):
    """Build a wheel, install it into a fresh venv, run `spikediff-run --backend lava`."""
    t0 = time.monotonic()
    src, dist, venv, out = (tmp_path / d for d in ("src", "dist", "venv", "out"))
    ign = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, f), src / f)
    for d in ("spikediff", "export", "hardware"):
        shutil.copytree(os.path.join(REPO, d), src / d, ignore=ign)

    def sh(*cmd, **kw):
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
        assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, src)
    (wheel,) = glob.glob(str(dist / "spikediff-*.whl"))
    sh(sys.executable, "-m", "venv", "--without-pip", venv)
    vpy = venv / "bin" / "python"
    (vsite,) = glob.glob(str(venv / "lib" / "python3*" / "site-packages"))
    main_site = _copy_numpy(vsite)
    # everything else (torch, norse, nir, pip ...) from the main env, after the venv's own
    with open(os.path.join(vsite, "zz_main_env.pth"), "w") as f:
        f.write(main_site + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["SPIKEDIFF_LAVA_PY"] = LAVA_PY
    sh(vpy, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, env=env, cwd=tmp_path)
    files = sh(vpy, "-c", "import numpy, spikediff, hardware.lava.client as c; "
               "print(numpy.__file__); print(spikediff.__file__); print(c.__file__)",
               env=env, cwd=tmp_path).split()
    for f in files:
        assert _under(f, vsite), f"{f} is not installed in the venv"

    png = out / "grid.png"
    t1 = time.monotonic()
    sh(venv / "bin" / "spikediff-run", "--backend", "lava", "--n", "1", "--steps", "2",
       "--refine-steps", "0", "--no-progress", "--out", png, env=env, cwd=tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"install {t1 - t0:.1f} s, run {time.monotonic() - t1:.1f} s")

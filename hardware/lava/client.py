"""Main-environment client of the Lava worker (never imports Lava).

    from hardware.lava.client import LavaWorker
    with LavaWorker() as lw:
        res = lw.run("model.nir", "denoiser", {"input": x})   # x: [T, B, *shape]
        spikes = res["lif1"]            # [T + max_lag, B, *shape]
        aligned = res.aligned("lif1")   # [T, B, *shape], comparable to Norse
        res.lags, res.timing

The worker (the package ``hardware.lava.worker``) runs in the Python 3.10 Lava environment
as a separate process group; requests and results travel as JSON lines and
``.npz`` files in a private temporary directory.  A crash or time-out kills
the whole process group and raises :class:`LavaWorkerError` with the worker's
last stderr lines.
"""

from __future__ import annotations

import glob
import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# All the worker imports from this project: its package (every .py file in
# it) and the modules above it (stdlib, numpy, scipy, nir and lava come from
# the Lava env itself).
WORKER_PACKAGE = "hardware/lava/worker"
WORKER_FILES = ("hardware/__init__.py", "hardware/lava/__init__.py", "export/__init__.py",
                "export/fixed_point.py")


def worker_files() -> list[str]:
    """The files the worker runs from, relative to REPO: WORKER_FILES and its package."""
    pkg = os.path.join(REPO, WORKER_PACKAGE)
    return list(WORKER_FILES) + sorted(f"{WORKER_PACKAGE}/{f}" for f in os.listdir(pkg)
                                       if f.endswith(".py"))

HOWTO = (
    "The Lava environment (Python 3.10 with lava-dl 0.6.0, lava-nc, nir, numpy<2) was not found.\n"
    "Create it with:\n"
    "    bash scripts/setup.sh        # builds it once under ~/.cache/spikediff/envs/lava-*,\n"
    "                                 # `source scripts/setup.sh` also exports SPIKEDIFF_LAVA_PY\n"
    "or by hand:\n"
    "    python3.10 -m venv ~/.venvs/spikediff-lava\n"
    "    ~/.venvs/spikediff-lava/bin/python -m pip install -r requirements/lava.txt\n"
    "    export SPIKEDIFF_LAVA_PY=~/.venvs/spikediff-lava/bin/python\n"
    "(Python 3.10 via pyenv: `pyenv install 3.10` then `$(pyenv root)/versions/3.10.*/bin/python3.10`.)"
)


class LavaUnavailableError(RuntimeError):
    """No usable Lava environment; the message says how to create one."""


class LavaWorkerError(RuntimeError):
    """The worker crashed, timed out or reported an error."""


def find_lava_python(python: str | None = None) -> str:
    """Interpreter of the Lava env: argument, $SPIKEDIFF_LAVA_PY, else the cached env."""
    cands = []
    if python:
        cands = [("argument", python)]
    elif os.environ.get("SPIKEDIFF_LAVA_PY"):
        cands = [("SPIKEDIFF_LAVA_PY", os.environ["SPIKEDIFF_LAVA_PY"])]
    else:
        cache = os.environ.get("SPIKEDIFF_CACHE") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "spikediff")
        envs = sorted(glob.glob(os.path.join(cache, "envs", "lava-*")), key=os.path.getmtime, reverse=True)
        cands = [("cache", os.path.join(e, "bin", "python")) for e in envs
                 if os.path.isfile(os.path.join(e, ".complete"))]
    for src, p in cands:
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
        raise LavaUnavailableError(f"Lava python {p!r} (from {src}) does not exist or is not executable.\n" + HOWTO)
    raise LavaUnavailableError(HOWTO)


class LavaResult(dict):
    """Recorded arrays by node name ([steps, B, *shape]) plus lags and timing."""

    def __init__(self, arrays, lags, timing, steps, T, scales=None, input_clipped=0):
        super().__init__(arrays)
        self.lags, self.timing, self.steps, self.T = lags, timing, steps, T
        self.scales = scales        # fixed_pt: {population: S} the worker used
        self.input_clipped = input_clipped   # frozen scales: inputs saturated to 16 bits

    def aligned(self, name):
        """The node's record shifted by its lag: [T, B, *shape], index = reference step."""
        lag = self.lags[name]
        return self[name][lag:lag + self.T]


class LavaWorker:
    """Context manager around one persistent worker process."""

    def __init__(self, python: str | None = None, timeout: float = 600.0,
                 start_timeout: float = 120.0, env: dict | None = None):
        self.python = find_lava_python(python)
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.extra_env = env or {}
        self.proc = None
        self.pgid = None
        self._buf = b""
        self._id = 0
        self.tmp = None
        self.info = None

    # -- process management --------------------------------------------
    def start(self):
        if self.proc is not None:
            return self
        self.tmp = tempfile.mkdtemp(prefix="spikediff-lava-")
        self.stderr_path = os.path.join(self.tmp, "worker.stderr")
        # The worker (Python 3.10) must see nothing of this interpreter: after
        # `pip install .` REPO is our site-packages, whose numpy etc. are built
        # for 3.11, and the caller's PYTHONPATH may hold the same.  So it gets a
        # private copy of just its own files, that folder alone as PYTHONPATH
        # and cwd, and no user site (-s).  The copy goes with self.tmp.
        src = os.path.join(self.tmp, "src")
        try:
            for f in worker_files():
                os.makedirs(os.path.join(src, os.path.dirname(f)), exist_ok=True)
                shutil.copyfile(os.path.join(REPO, f), os.path.join(src, f))
        except OSError:
            self._cleanup()
            raise
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.extra_env)
        env.pop("PYTHONHOME", None)
        env["PYTHONPATH"] = src
        # The worker's temporary files (the mapper's per-network folders) go
        # here too, so a killed worker leaves nothing behind in /tmp.
        env["TMPDIR"] = os.path.join(self.tmp, "tmp")
        os.makedirs(env["TMPDIR"])
        self._stderr = open(self.stderr_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [self.python, "-s", "-m", "hardware.lava.worker"], cwd=src, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                start_new_session=True)
        except OSError as e:
            self._cleanup()
            raise LavaUnavailableError(f"cannot start {self.python!r}: {e}\n" + HOWTO) from None
        self.pgid = self.proc.pid  # new session: pgid == pid
        self.info = self._read_reply(time.monotonic() + self.start_timeout, "start")
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close(graceful=False)
        except Exception:
            pass

    def _kill(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        # Lava's runtime children share the process group: wait until it is empty
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _group_alive(self.pgid):
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.05)

    def _cleanup(self):
        if self.proc is not None:
            for s in (self.proc.stdin, self.proc.stdout):
                try:
                    s.close()
                except Exception:
                    pass
        try:
            self._stderr.close()
        except Exception:
            pass
        self.proc = None
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def close(self, graceful: bool = True):
        if self.proc is None:
            return
        try:
            if graceful and self.proc.poll() is None:
                try:
                    self._send({"cmd": "shutdown"}, time.monotonic() + 30)
                    self.proc.wait(timeout=10)
                except Exception:
                    pass
        finally:
            self._kill()
            self._cleanup()

    def stderr_tail(self, n=30) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 20000))
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""

    def _fail(self, what):
        tail = self.stderr_tail()
        rc = self.proc.poll() if self.proc else None
        self._kill()
        self._cleanup()
        raise LavaWorkerError(f"Lava worker {what} (exit code {rc}); last stderr lines:\n{tail}")

    # -- protocol --------------------------------------------------------
    def _read_reply(self, deadline, what):
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._fail(f"timed out during {what}")
                if not sel.select(timeout=min(left, 1.0)):
                    if self.proc.poll() is not None:
                        self._fail(f"died during {what}")
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(timeout=5) if self.proc.poll() is None else None
                    self._fail(f"died during {what}")
                self._buf += chunk
        finally:
            sel.close()
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            self._fail(f"wrote a malformed reply {line[:200]!r}")

    def _send(self, obj, deadline):
        if self.proc is None:
            self.start()
        self._id += 1
        obj = dict(obj, id=self._id)
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail(f"is gone (writing {obj.get('cmd')})")
        rep = self._read_reply(deadline, obj.get("cmd", "request"))
        if not rep.get("ok"):
            raise LavaWorkerError(f"Lava worker error ({rep.get('type')}): {rep.get('error')}")
        return rep

    def request(self, cmd: str, timeout: float | None = None, **kw):
        """Send a raw command (ping, sleep, exit ...)."""
        self.start()
        return self._send(dict(kw, cmd=cmd), time.monotonic() + (timeout or self.timeout))

    def run(self, nir_path, subgraph=None, inputs=None, mode="floating_pt", record=None,
            timeout: float | None = None, weights: str = "single",
            calibration: dict | None = None) -> LavaResult:
        """Run one subgraph on a batch: inputs {Input node: [T, B, *shape]};
        fixed_pt ``weights``: "single" (one 8-bit synapse per connection) or "split";
        ``calibration`` (quantise.check_calibration's form): frozen scales, else
        the worker calibrates per call."""
        if not inputs:
            raise ValueError("inputs must map each Input node name to a [T, B, *shape] array")
        self.start()
        T = {np.shape(v)[0] for v in inputs.values()}
        if len(T) != 1:
            raise ValueError(f"inputs have different T: {T}")
        n = self._id + 1
        req_path = os.path.join(self.tmp, f"req{n}.npz")
        res_path = os.path.join(self.tmp, f"res{n}.npz")
        np.savez(req_path, **{k: np.asarray(v, dtype=np.float64) for k, v in inputs.items()})
        try:
            rep = self._send({"cmd": "run", "nir": os.path.abspath(str(nir_path)),
                              "subgraph": subgraph, "mode": mode,
                              "record": list(record) if record else None,
                              "weights": weights, "calibration": calibration,
                              "inputs": req_path, "output": res_path},
                             time.monotonic() + (timeout or self.timeout))
            with np.load(res_path) as f:
                arrays = {k: f[k] for k in f.files}
        finally:
            for p in (req_path, res_path):
                if os.path.exists(p):
                    os.unlink(p)
        return LavaResult(arrays, rep["lags"], rep["timing"], rep["steps"], T.pop(),
                          rep.get("scales"), int(rep.get("input_clipped") or 0))


def _group_alive(pgid) -> bool:
    """True if some live (non-zombie) process is in process group pgid (Linux /proc)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
            return True
        except OSError:
            return False
    return False

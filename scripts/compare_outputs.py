"""Do two commits give the same outputs? For refactors that must change nothing.

    python scripts/compare_outputs.py BASE [--head HEAD] [--lava] [--keep DIR]

Checks out BASE (and HEAD, default: the working tree) as git worktrees, runs the
same user-level commands in each on the shipped checkpoints, and compares what
they wrote: PNG and JSON bytes (JSON without timings), arrays in .npz files, NIR
graphs node by node (nir.read: types, parameters, edges, metadata) and ONNX
models by their outputs on the same inputs (onnxruntime). Prints one line per
output, "same bytes", "same numbers" or what differs, and exits 1 on any
difference. Run it in the main environment (`source scripts/setup.sh`).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from spikediff.cliutil import ArgumentParser, handle_errors  # one error: line, exit 2

REPO = Path(__file__).resolve().parent.parent
W = "spikediff/weights"
# (output name, command); run from the tree's root, writing into $OUT
COMMANDS = [
    *[(f"sample-{c}", ["-m", "spikediff", "sample", "--checkpoint", f"{W}/{c}.pt", "--n", "8",
                       "--out", f"$OUT/sample-{c}.png", "--npz", f"$OUT/sample-{c}.npz",
                       "--no-progress"]) for c in ("mnist", "mnist-base", "mnist-lowenergy")],
    ("export-nir", ["-m", "export", "--to", "nir", "--out", "$OUT/model.nir"]),
    ("export-onnx", ["-m", "export", "--to", "onnx", "--out", "$OUT/onnx"]),
    *[(f"run-{b}", ["-m", "hardware.run", "--backend", b, "--n", "2", "--steps", "4",
                    "--refine-steps", "2", "--out", f"$OUT/run-{b}.png", "--json",
                    f"$OUT/run-{b}.json", "--no-progress"]) for b in ("norse", "nir")],
    ("energy", ["-m", "hardware.energy", "report", "--n", "8", "--json", "$OUT/energy.json",
                "--no-progress", "--quiet"]),
    ("energy-base", ["-m", "hardware.energy", "report", "--checkpoint", f"{W}/mnist-base.pt",
                     "--n", "8", "--json", "$OUT/energy-base.json", "--no-progress", "--quiet"]),
]
LAVA = [("run-lava", ["-m", "hardware.run", "--backend", "lava", "--n", "1", "--steps", "3",
                      "--refine-steps", "0", "--compare", "--out", "$OUT/run-lava.png",
                      "--json", "$OUT/run-lava.json", "--no-progress"])]
VOLATILE = ("time", "timing", "seconds", "wall", "per_s", "code_version", "checkpoint", "path",
            "nir", "file")


def sh(*cmd, **kw) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def run_all(tree: Path, out: Path, commands) -> None:
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    for name, args in commands:
        args = [a.replace("$OUT", str(out)) for a in args]
        r = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True,
                           text=True)
        (out / f"{name}.stdout").write_text(r.stdout)
        if r.returncode:
            (out / f"{name}.FAILED").write_text(r.stderr)


TREES: list[str] = []  # the two trees' roots (set in main): paths are compared relative to them


def strip(obj):
    """JSON without what differs from run to run (timings, also keys in seconds "*_s")
    or tree to tree (paths)."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items()
                if not (any(s in k for s in VOLATILE) or k.endswith("_s"))}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    if isinstance(obj, str):
        for root in TREES:
            obj = obj.replace(root, "<tree>")
    return obj


def same_nir(a: Path, b: Path) -> str | None:
    import nir
    ga, gb = nir.read(a), nir.read(b)

    def walk(x, y, where):
        if type(x) is not type(y):
            return f"{where}: {type(x).__name__} vs {type(y).__name__}"
        if isinstance(x, nir.NIRGraph):
            for key in ("edges", "metadata"):
                if strip(json.loads(json.dumps(getattr(x, key), default=str))) != \
                        strip(json.loads(json.dumps(getattr(y, key), default=str))):
                    return f"{where}: {key} differ"
            if sorted(x.nodes) != sorted(y.nodes):
                return f"{where}: node names differ"
            for k in x.nodes:
                diff = walk(x.nodes[k], y.nodes[k], f"{where}/{k}")
                if diff:
                    return diff
            return None
        for field, va in vars(x).items():
            vb = getattr(y, field, None)
            if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
                if not np.array_equal(np.asarray(va), np.asarray(vb)):
                    return f"{where}.{field} differs"
            elif isinstance(va, dict):
                if set(va) != set(vb) or any(not np.array_equal(np.asarray(va[k]), np.asarray(vb[k]))
                                             for k in va):
                    return f"{where}.{field} differs"
            elif va != vb:
                return f"{where}.{field}: {va!r} vs {vb!r}"
        return None
    return walk(ga, gb, "graph")


def same_onnx(a: Path, b: Path) -> str | None:
    import onnxruntime as ort
    sa, sb = ort.InferenceSession(str(a)), ort.InferenceSession(str(b))
    ia, ib = sa.get_inputs(), sb.get_inputs()
    if [(i.name, i.shape) for i in ia] != [(i.name, i.shape) for i in ib]:
        return "inputs differ"
    rng = np.random.default_rng(0)
    feed = {}
    for i in ia:
        shape = [d if isinstance(d, int) else 2 for d in i.shape]
        feed[i.name] = ((rng.random(shape) < 0.3) if "int" not in i.type else
                        rng.integers(0, 2, shape)).astype(np.float32 if "float" in i.type else np.int64)
    for oa, ob in zip(sa.run(None, feed), sb.run(None, feed)):
        if not np.array_equal(oa, ob):
            return f"outputs differ (max {np.max(np.abs(oa - ob)):.3g})"
    return None


def compare(a: Path, b: Path, rel: str, roots: tuple[Path, Path] = (REPO, REPO)) -> str | None:
    """None if the same; else what differs. `roots`: the trees that wrote a and b,
    whose paths in JSON (the shipped checkpoint's, resolved) are the same file."""
    if not b.exists():
        return "missing in HEAD"
    if a.read_bytes() == b.read_bytes():
        return None
    if a.suffix == ".json":
        ja, jb = (json.loads(f.read_text().replace(json.dumps(str(r))[1:-1], "<tree>"))
                  for f, r in zip((a, b), roots))
        return None if strip(ja) == strip(jb) else "JSON numbers differ"
    if a.suffix == ".npz":
        na, nb = np.load(a), np.load(b)
        return None if set(na) == set(nb) and all(np.array_equal(na[k], nb[k]) for k in na) \
            else "arrays differ"
    if a.suffix == ".nir":
        return same_nir(a, b)
    if a.suffix == ".onnx":
        return same_onnx(a, b)
    if a.suffix == ".stdout":
        return None  # printed timings; the files themselves are compared
    return "bytes differ"


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="commit to compare against (e.g. HEAD~3)")
    p.add_argument("--head", help="the other commit (default: the working tree)")
    p.add_argument("--lava", action="store_true", help="also one image on Lava (about a minute)")
    p.add_argument("--keep", help="keep the outputs in this folder")
    a = p.parse_args(argv)
    work = Path(a.keep or tempfile.mkdtemp(prefix="compare-outputs-"))
    commands = COMMANDS + (LAVA if a.lava else [])
    trees = {}
    try:
        for label, rev in (("base", a.base), ("head", a.head)):
            if rev is None:
                trees[label] = REPO
                continue
            trees[label] = work / f"tree-{label}"
            sh("git", "-C", str(REPO), "worktree", "add", "--detach", str(trees[label]), rev)
        TREES[:] = [str(t) for t in trees.values()]
        for label, tree in trees.items():
            print(f"running {len(commands)} commands in {label} ({tree})", file=sys.stderr)
            run_all(tree, work / label, commands)
        failed, n = 0, 0
        for f in sorted((work / "base").rglob("*")):
            if f.is_dir():
                continue
            rel = f.relative_to(work / "base")
            if f.suffix == ".stdout":
                continue
            if f.suffix == ".FAILED":
                failed += 1
                print(f"{f.stem:40s} FAILED in base: {f.read_text().strip().splitlines()[-1]}")
                continue
            n += 1
            diff = compare(f, work / "head" / rel, str(rel), (trees["base"], trees["head"]))
            if diff is None:
                kind = "same bytes" if f.read_bytes() == (work / "head" / rel).read_bytes() \
                    else "same numbers"
            else:
                failed += 1
            print(f"{str(rel):40s} {kind if diff is None else 'DIFFERENT: ' + diff}")
        for f in (work / "head").rglob("*.FAILED"):
            failed += 1
            print(f"{f.stem:40s} FAILED in head: {f.read_text().strip().splitlines()[-1]}")
        print("all the same" if not failed else f"{failed} outputs differ or failed")
        return 1 if failed else 0
    finally:
        for label, tree in trees.items():
            if tree != REPO:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(handle_errors(main)())

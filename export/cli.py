"""`spikediff-export`: write a trained model as NIR (or ONNX) and check it by re-running it.

  spikediff-export --to nir  [--checkpoint CKPT] [--out model.nir] [--verify] [--force]
                   [--part encoder|decoder|denoiser] [--spiking-only] [--target NAME]
  spikediff-export --verify FILE [--checkpoint CKPT]     check an existing NIR file
  spikediff-export --to onnx [--checkpoint CKPT] [--out DIR] [--verify] [--force]
  spikediff-export --list

Without --checkpoint the shipped MNIST checkpoint is used. Outputs are written
to a temporary file beside the target and renamed into place; an existing
output is only replaced with --force.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import tempfile
from pathlib import Path

from spikediff.atomic import atomic_path
from spikediff.cliutil import (ArgumentParser, add_checkpoint_args, check_outputs, count,
                               handle_errors, pick_checkpoint)
from spikediff.errors import SpikediffError

FORMATS = {
    "nir": "one NIR file (nir.write): subgraphs encoder, decoder, denoiser; "
           "verified by re-running it with the project's executor",
    "onnx": "encoder.onnx, decoder.onnx, denoiser.onnx in a folder, unrolled over T "
            "(onnxruntime)",
    "netx": "Lava-dl netx (hdf5) via export.netx, where installed",
}
DEFAULT_OUT = {"nir": "model.nir", "onnx": "model-onnx", "netx": "model-netx"}


def netx_module():
    """The optional netx exporter (export.netx), or None."""
    name = "export.netx"
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except ModuleNotFoundError:
        return None
    return importlib.import_module(name)


def available() -> dict[str, bool]:
    return {"nir": True, "onnx": True, "netx": netx_module() is not None}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="spikediff-export", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="formats: " + "; ".join(f"{k}: {v}" for k, v in FORMATS.items()))
    p.add_argument("--to", choices=list(FORMATS), default="nir", help="output format (default nir)")
    add_checkpoint_args(p)
    p.add_argument("--out", help="output file (nir) or folder (onnx); default "
                   + ", ".join(f"{k}: {v}" for k, v in DEFAULT_OUT.items()))
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.add_argument("--list", action="store_true", help="list the export formats and exit")
    p.add_argument("--verify", nargs="?", const=True, default=False, metavar="FILE",
                   help="re-import the written export and compare it with the Norse model "
                   "on a few random inputs, layer by layer; with FILE (nir): check that "
                   "existing file (its metadata against its graph, then every layer against "
                   "--checkpoint) and write nothing")
    p.add_argument("--part", choices=["encoder", "decoder", "denoiser"],
                   help="nir: write this part alone as the file's graph (default: all three "
                   "as subgraphs)")
    p.add_argument("--spiking-only", action="store_true",
                   help="nir: move the analog readouts (LI, I) to the host, so that every node "
                   "is a synapse or a LIF neuron; the metadata's host records say how to read "
                   "the Output")
    p.add_argument("--target", default="generic", metavar="NAME",
                   help="nir: write the network in the form this consumer reads correctly: "
                   "generic (default), snntorch, norse, sinabs, spyx (docs/nir.md)")
    p.add_argument("--float32", action="store_true",
                   help="nir: store parameters as float32 (default float64, which keeps "
                   "BN folding exact enough for spike-exact re-runs)")
    p.add_argument("--n", type=count, default=2, help="--verify: inputs per part (default 2)")
    return p


def _atomic_write(target: Path, write) -> None:
    with atomic_path(target) as tmp:
        write(tmp)


def _print_counts(counts: dict) -> None:
    total: dict[str, int] = {}
    for part, c in counts.items():
        print(f"  {part:9s} " + ", ".join(f"{k} {v}" for k, v in c.items()))
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    print("  total     " + ", ".join(f"{k} {v}" for k, v in sorted(total.items())))


def cmd_nir(model, out: Path, a) -> int:
    import numpy as np

    from .nir_graph import build_graph, node_counts
    from .targets import profile

    target = profile(a.target)
    check_outputs([out], a.force)
    spiking = a.spiking_only or not target.READS_READOUTS
    if spiking and not a.spiking_only:
        print(f"note: {target.NAME}'s NIR import has no LI/I readouts: writing the spiking form "
              "(readouts as host records, as --spiking-only)")
    graph = build_graph(model, np.float32 if a.float32 else np.float64, part=a.part,
                        form="spiking" if spiking else "full")
    graph = target.adapt(graph)
    _atomic_write(out, lambda tmp: target.write(graph, tmp))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, target {target.NAME}), "
          "NIR nodes by type:")
    _print_counts(node_counts(graph))
    if target.NAME == "generic":
        print("readers: nir >= 1.0.5 (LIF v_reset); for nir 1.0.4 readers such as sinabs, "
              "--target sinabs")
    return verify_file(model, out, a) if a.verify else 0


def verify_file(model, path: Path, a) -> int:
    """Re-read `path` (metadata checked against the graph) and compare every layer
    with the model on a.n random inputs per part."""
    from .nir_exec import Exported, format_rows, verify

    ex = Exported.read(path)  # nir.read with its type check, then the metadata check
    said = ex.md.get("weights_sha256")
    from spikediff.checkpoint import weights_hash
    if said is not None and str(said) != weights_hash(model.vq, model.denoiser):
        raise SpikediffError(f"{path} was exported from other weights than "
                             f"{a.checkpoint}: pass the checkpoint "
                             "it came from with --checkpoint")
    rows = verify(model, ex, n=a.n)
    print(f"verification of {path} ({', '.join(ex.parts)}; graph re-read from the file vs "
          "the Norse model, float64):")
    print(format_rows(rows))
    bad = [r for r in rows if r["mismatches"]
           or (r["kind"] == "values" and r["max_abs"] > 1e-5)]
    if bad:
        print(f"MISMATCH in {len(bad)} rows")
        return 1
    print("all spike trains identical; values within 1e-5")
    return 0


def cmd_onnx(model, out: Path, a) -> int:
    from .onnx_export import NAMES, check_onnx, export_onnx

    check_outputs(_onnx_targets(out), a.force)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=out) as tmp:
        written = export_onnx(model, tmp)
        for part, p in written.items():
            os.replace(p, out / p.name)
    paths = {part: out / f"{part}.onnx" for part in NAMES}
    for part, p in paths.items():
        print(f"wrote {p} ({p.stat().st_size / 1e6:.2f} MB)")
    if a.verify:
        res = check_onnx(model, paths, n=a.n)
        print("onnxruntime vs PyTorch:")
        for k, v in res.items():
            print(f"  {k:32s} {v:.3g}")
        bad = [k for k, v in res.items() if (v > 0 if "mismatch" in k else v > 1e-4)]
        if bad:
            print("MISMATCH: " + ", ".join(bad))
            return 1
        print("all outputs within 1e-4, codes identical")
    return 0


def _onnx_targets(out: Path) -> list[Path]:
    from .onnx_export import NAMES
    return [out / f"{part}.onnx" for part in NAMES]


def cmd_netx(model, out: Path, a) -> int:
    mod = netx_module()
    if mod is None:
        raise SpikediffError("the netx format is not available: export.netx is "
                             "not installed in this checkout (formats here: nir, onnx)")
    if not hasattr(mod, "export"):
        raise SpikediffError("export.netx has no export(model, out, force=...) "
                             "function")
    check_outputs([out], a.force, folders=True)
    result = mod.export(model, out, force=a.force)
    print(f"wrote {out}" if result is None else str(result))
    return 0


@handle_errors
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.list:
        av = available()
        for k, v in FORMATS.items():
            print(f"{k:5s} {'' if av[k] else '(not available) '}{v}")
        return 0
    if a.to == "netx" and netx_module() is None:
        return cmd_netx(None, Path(a.out or DEFAULT_OUT["netx"]), a)
    from spikediff import checkpoint
    pick_checkpoint(a)
    if isinstance(a.verify, str):  # --verify FILE: check an existing file, write nothing
        if a.to != "nir" or a.out or a.part or a.spiking_only or a.target != "generic":
            raise SpikediffError("--verify FILE checks an existing NIR file; it takes only "
                                 "--checkpoint and --n")
        path = Path(a.verify)
        if not path.is_file():
            raise SpikediffError(f"--verify {path}: no such file")
        model = checkpoint.load_model(a.checkpoint)
        return verify_file(model, path, a)
    if a.to != "nir" and (a.part or a.spiking_only or a.target != "generic"):
        raise SpikediffError("--part, --spiking-only and --target apply to --to nir only")
    if a.to == "nir":
        from .targets import profile
        target = profile(a.target)  # an unknown target before the (slow) load
        if a.part is None and not target.READS_NESTED:
            raise SpikediffError(f"{target.NAME}'s NIR import reads one flat graph: add --part "
                                 "encoder, decoder or denoiser (one file per part)")
    out = Path(a.out or DEFAULT_OUT[a.to])
    # before the (slow) load; each cmd_* checks again right before writing
    if a.to == "nir":
        check_outputs([out], a.force)
    elif a.to == "onnx":
        check_outputs(_onnx_targets(out), a.force)
    else:
        check_outputs([out], a.force, folders=True)
    model = checkpoint.load_model(a.checkpoint)
    print(f"checkpoint: {checkpoint.resolve(a.checkpoint)} (preset {model.config.preset})")
    return {"nir": cmd_nir, "onnx": cmd_onnx, "netx": cmd_netx}[a.to](model, out, a)

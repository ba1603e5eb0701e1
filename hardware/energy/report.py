"""Run the model, aggregate counts per layer / component / image, price them, render.

`measure()` runs real generation (denoiser at every sampling step, spike
generator, decoder) and the encoder on real images under a `Recorder`;
`build_report()` turns a `Tally` (from this or any other back end) into a
plain dict (the JSON), `format_report()` into the terminal table and
`save_plot()` into a bar chart.
"""
from __future__ import annotations

import math

import torch

from spikediff.atomic import atomic_path
from spikediff.plots import save_figure

from .constants import EnergyConstants
from export.fixed_point import synapses_per_connection

from .counting import (COMPONENTS, Recorder, Tally, dense_macs, layer_weights, model_layers,
                       padded_macs)

LOIHI_MAC_CHOICE = ("analog-fed layers (first encoder conv, spike generator; the denoiser input "
                    "conv of the paper's raw-input form) charged as MACs on a 45 nm host at "
                    "loihi_mac_pj each")


# ------------------------------------------------------------------ measure

@torch.no_grad()

def encoder_input(generated: torch.Tensor, real_images, n: int, info: dict) -> torch.Tensor:
    """The encoder's images: the first n real test images, else the generated
    ones (recorded in info either way)."""
    if real_images is None:
        info["encoder_input"] = "generated images (no real test images available)"
        return generated
    info["encoder_input"] = f"{min(n, len(real_images))} real test images"
    return real_images[:n].to(torch.float32)

def measure(model, *, n: int = 16, steps: int | None = None, seed: int = 0,
            temperature: float | None = None, refine=None,
            real_images: torch.Tensor | None = None,
            batch_size: int = 64, progress: bool = True, verify: bool = False) -> tuple[Tally, dict]:
    """Counts from real generation of n images and from encoding real images.

    real_images: [N, C, H, W] in [0, 1] for the encoder (the first n are
    used); None encodes the generated images instead (noted in the result).
    refine: a diffusion.Refinement (None: the config's); its steps are denoiser
    passes too, counted like the sampling steps.
    """
    from spikediff import qat
    from spikediff.errors import SpikediffError
    from spikediff.progress import bar as progress_bar
    if qat.enabled(model.denoiser) or qat.enabled(model.vq):
        # the quantized forward computes currents with F.conv2d on the rounded
        # folded weights, past the synapse modules the counting hooks sit on:
        # it would count nothing (0 pJ), so refuse rather than report that
        raise SpikediffError(
            "this checkpoint was fine-tuned with [train] quantize = \"loihi8\"; the energy "
            "count does not follow its quantized layers yet: measure the float checkpoint it "
            "was fine-tuned from (spikediff info shows it)")

    model.eval()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    S = steps or model.diffusion_steps
    tally = Tally()
    refine = model.config.diffusion.refinement() if refine is None else refine
    info = {"n_generated": n, "sampling_steps": S, "refine_steps": refine.steps, "seed": seed}
    gen = []
    with Recorder(model, verify=verify, tally=tally):
        bar = progress_bar(total=n * (S + refine.steps), desc="generating (counting spikes)",
                           unit="img-step", show=progress, leave=False, dynamic_ncols=True)
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            img, _ = model.generate(b, temperature=temperature, steps=steps, generator=g,
                                    on_step=lambda _: bar.update(b), refine=refine)
            gen.append(img)
        bar.close()
        gen = torch.cat(gen)
        enc_in = encoder_input(gen, real_images, n, info)
        for i in range(0, len(enc_in), batch_size):
            model.vq.encode_spikes(enc_in[i:i + batch_size])
    info["n_encoded"] = len(enc_in)
    return tally, info


# ---------------------------------------------------------------- aggregate

def layer_energies(c: dict, parts: int, k: EnergyConstants) -> dict:
    """pJ of one layer's per-image counts under each model; `parts` synapses
    per connection on Loihi (the fixed-point mapping's split, see
    export.fixed_point)."""
    inactive = c["neuron_updates"] - c["active"]
    e45 = c["synops"] * k.ac_pj + c["macs"] * k.mac_pj + c["neuron_updates"] * k.neuron_update_45nm_pj
    loihi_syn = c["synops"] * parts * k.loihi_synop_pj
    loihi_neu = inactive * k.loihi_neuron_inactive_pj + c["active"] * k.loihi_neuron_active_pj
    loihi_mac = c["macs"] * k.loihi_mac_pj
    return {"snn_45nm_pj": e45, "loihi_pj": loihi_syn + loihi_neu + loihi_mac,
            "loihi_synops_pj": loihi_syn, "loihi_neurons_pj": loihi_neu, "loihi_macs_pj": loihi_mac,
            "loihi_one_synapse_pj": c["synops"] * k.loihi_synop_pj + loihi_neu + loihi_mac}


SUM_KEYS = ("synops", "macs", "macs_once", "neuron_updates", "active", "events", "ann_macs",
            "ann_adds", "snn_45nm_pj", "loihi_pj", "loihi_synops_pj", "loihi_neurons_pj",
            "loihi_macs_pj", "loihi_one_synapse_pj", "ann_45nm_pj", "neurons")


def build_report(model, tally: Tally, constants: EnergyConstants, meta: dict | None = None,
                 lava_weights: str = "single") -> dict:
    """Per layer (per image and call), per component (per image) and per generated image.
    lava_weights: the fixed-point mapping's "single" 8-bit synapse per connection,
    or "split" (two where one 8-bit mantissa is not exact: those synaptic
    operations count twice)."""
    specs = model_layers(model)
    k = constants
    meta = dict(meta or {})
    meta["lava_weights"] = lava_weights
    misfit = []
    n_gen = meta.get("n_generated")
    weights = layer_weights(model)
    layers = []
    for s in specs:
        c = tally.counts.get(s.name)
        if c is None or c.samples == 0:
            continue
        per = c.scaled(c.samples)              # per image per call
        dm = dense_macs(s)
        row = {"name": s.name, "component": s.component, "kind": s.kind,
               "in_shape": list(s.in_shape), "out_shape": list(s.out_shape),
               "input": "analog" if s.analog else "spikes", "note": s.note,
               "neurons": s.neurons, "samples": c.samples,
               "time_steps": c.steps // c.samples,
               "firing_rate": c.firing_rate if s.has_neurons else None,
               "input_spike_rate": (c.events / c.input_slots) if c.input_slots else None,
               "synops": per["synops"], "macs": per["macs"], "macs_once": per["macs_once"],
               "neuron_updates": per["neuron_updates"], "active": per["active"],
               "events": per["events"], "dense_macs": dm, "padded_macs": padded_macs(s),
               "nonbinary_inputs": c.nonbinary}
        # The ANN twin, its cheapest exact form: a one-hot-fed layer gathers and
        # adds the weights of the ones (the synaptic ops of one step), else dense MACs.
        steps = c.steps // c.samples
        row["ann_adds"] = per["synops"] / steps if s.one_hot else 0
        row["ann_macs"] = 0 if s.one_hot else dm
        row["ann_45nm_pj"] = row["ann_adds"] * k.ac_pj + row["ann_macs"] * k.mac_pj
        # a loihi8 checkpoint's denoiser and decoder export onto the 8-bit grid
        # (export/loihi8.py; the mapping checks it): one synapse even when split
        trained8 = s.component != "encoder" and getattr(model.denoiser, "quantize", "")
        need = 1 if s.analog or trained8 else synapses_per_connection(weights[s.name])
        parts = need if lava_weights == "split" else 1
        if need > parts:
            misfit.append(s.name)
        row["loihi_synapses_per_connection"] = parts
        row.update(layer_energies(per, parts, k))
        if s.name in tally.brute:
            row["synops_brute_force"] = tally.brute[s.name] / c.samples
            row["brute_force_agrees"] = tally.brute[s.name] == c.synops
        layers.append(row)

    if misfit:
        meta.setdefault("warnings", []).append(
            f"{len(misfit)} layer(s) ({', '.join(misfit[:4])}{' ...' if len(misfit) > 4 else ''}) "
            "do not fit one 8-bit weight per synapse: the Lava mapping refuses them unsplit; "
            "counted at one synapse per connection (fine-tune with [train] quantize = "
            "\"loihi8\", or count the split: --lava-weights split)")
    # calls per image: for the denoiser one pass per sampling and refinement step, else 1
    den0 = tally.counts.get(next((s.name for s in specs if s.component == "denoiser"), ""))
    S = meta.get("sampling_steps")
    if den0 is not None and n_gen:
        S = den0.samples / n_gen
    components = {}
    for comp in COMPONENTS:
        rows = [r for r in layers if r["component"] == comp]
        if not rows:
            continue
        tot = {key: sum(r[key] for r in rows) for key in SUM_KEYS}
        tot["firing_rate"] = (tot["active"] / tot["neuron_updates"]) if tot["neuron_updates"] else 0.0
        tot["layers"] = [r["name"] for r in rows]
        if comp == "denoiser":
            components["denoiser_call"] = dict(tot, per="image, one sampling step")
            per_img = {key: tot[key] * S for key in SUM_KEYS if key != "neurons"}
            components["denoiser"] = dict(tot, **per_img, per=f"image, {S:g} denoiser calls",
                                          calls_per_image=S)
        else:
            components[comp] = dict(tot, per="encoded real image" if comp == "encoder" else "image")
    gen_parts = [p for p in ("denoiser", "spike_generator", "decoder") if p in components]
    total = {key: sum(components[p][key] for p in gen_parts) for key in SUM_KEYS}
    total["firing_rate"] = (total["active"] / total["neuron_updates"]) if total["neuron_updates"] else 0.0
    total["parts"] = gen_parts
    total["per"] = "generated image (denoiser x steps + spike generator + decoder)"
    total["ann_over_snn_45nm"] = _ratio(total["ann_45nm_pj"], total["snn_45nm_pj"])
    total["ann_over_loihi"] = _ratio(total["ann_45nm_pj"], total["loihi_pj"])
    total["ann_over_loihi_one_synapse"] = _ratio(total["ann_45nm_pj"],
                                                 total["loihi_one_synapse_pj"])
    for comp in components.values():
        comp["ann_over_snn_45nm"] = _ratio(comp["ann_45nm_pj"], comp["snn_45nm_pj"])
        comp["ann_over_loihi"] = _ratio(comp["ann_45nm_pj"], comp["loihi_pj"])

    verified = [r for r in layers if "brute_force_agrees" in r]
    return {
        "meta": meta,
        "conventions": {
            "synops": "accumulates triggered by input spikes: one per outgoing connection "
                      "actually present (padding and stride handled exactly), per image and call",
            "macs": "layers fed analog values: dense MACs at every time step they are fed "
                    "(headline); macs_once = the static input computed once, as this "
                    "implementation does",
            "neuron_updates": "every LIF neuron at every time step; active = spiked",
            "ann": "the same layers as a conventional ANN, once per call (no time steps), x "
                   "denoiser calls for the denoiser, each layer in its cheapest exact form: a "
                   "layer fed one-hot input (the folded denoiser input) gathers and adds the "
                   "weights of the ones (ann_adds at ac_pj), every other layer dense MACs "
                   "(ann_macs at mac_pj); its bias adds and activations are not charged (in the "
                   "ANN's favour)",
            "snn_45nm": "synops x ac_pj + macs x mac_pj + neuron_updates x neuron_update_45nm_pj",
            "loihi": "synops x synapses per connection x loihi_synop_pj + neuron updates "
                     "(52/81 pJ inactive/active) + " + LOIHI_MAC_CHOICE,
            "loihi_synapses_per_connection": "the Lava fixed-point mapping writes one 8-bit "
                     "synapse per connection (lava_weights single, for weights fine-tuned "
                     "with [train] quantize = loihi8); with lava_weights split an 8-bit "
                     "mantissa plus an 8-bit rounding residual (two synapses per "
                     "connection, see export/fixed_point.py) wherever one 8-bit mantissa is "
                     "not exact, so those synaptic operations count twice; "
                     "loihi_one_synapse_pj is the same run at one synapse per connection",
            "host": "host-side operations listed separately, not in any chip energy",
            "batch_norm": "folded into the preceding synapse (no cost)",
        },
        "constants": constants.to_dict(),
        "constant_sources": EnergyConstants.SOURCES,
        "layers": layers,
        "components": components,
        "per_generated_image": total,
        "host_ops": host_ops(model, S or model.diffusion_steps),
        "brute_force_check": ({"layers": len(verified),
                               "all_agree": all(r["brute_force_agrees"] for r in verified)}
                              if verified else None),
    }


def _ratio(a, b):
    return a / b if b else None


def host_ops(model, S: float) -> list[dict]:
    """Rough counts of the non-spiking steps run on a host processor, per image."""
    vq, den = model.vq, model.denoiser
    h, w = model.grid
    hw = h * w
    K, D, T = vq.cfg.codebook_size, vq.cfg.code_dim, vq.cfg.T
    Td = den.cfg.T
    C, px = model.channels, model.image_size ** 2
    ops = []
    if den.spike_input:
        ops.append({"step": "denoiser input: one-hot token + step spike grid (2 per position)",
                    "per": f"generated image ({S:g} steps)", "ops": S * hw * 2,
                    "kind": "spike writes"})
    elif den.cfg.token_input == "embed":
        ops.append({"step": "denoiser input: token + time embedding lookup and add",
                    "per": f"generated image ({S:g} steps)", "ops": S * hw * den.cfg.embed_dim,
                    "kind": "adds (+ table reads)"})
    else:
        ops.append({"step": "denoiser input: token ids and t as float channels",
                    "per": f"generated image ({S:g} steps)", "ops": S * hw * 2, "kind": "writes"})
    ops += [
        {"step": "denoiser readout: mean of logits over T", "per": f"generated image ({S:g} steps)",
         "ops": S * K * hw * Td, "kind": "adds"},
        {"step": "softmax over K codes + draw one token", "per": f"generated image ({S:g} steps)",
         "ops": S * hw * K * 4, "kind": "exp/add/div/compare (~4 per logit)"},
        {"step": "reveal masked tokens (random number + compare)",
         "per": f"generated image ({S:g} steps)", "ops": S * hw * 2, "kind": "ops"},
        {"step": "codebook lookup of the code vectors fed to the spike generator",
         "per": "generated image", "ops": hw * D, "kind": "table reads"},
        {"step": "decoder readout: PSP over T and tanh", "per": "generated image",
         "ops": C * px * (T + 1), "kind": "MACs + tanh"},
        {"step": "encoder feature: (1-a) PSP + a rate", "per": "encoded image",
         "ops": D * hw * (2 * T + 2), "kind": "MACs/adds"},
        {"step": "nearest-code search (L2, argmin)", "per": "encoded image",
         "ops": hw * K * (3 * D + 1), "kind": "sub/mult/add/compare"},
    ]
    return ops


# -------------------------------------------------------------------- render

def fmt_energy(pj: float | None) -> str:
    if pj is None:
        return "-"
    for unit, f in (("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= f:
            return f"{pj / f:.3g} {unit}"
    return f"{pj:.3g} pJ"


def fmt_count(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.3g}{unit}"
    return f"{x:.3g}" if x != int(x) else f"{int(x)}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w)
                               for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def format_report(rep: dict, hardware: str = "all") -> str:
    show45 = hardware in ("45nm", "all")
    showL = hardware in ("loihi", "all")
    m = rep["meta"]
    out = []
    title = "Spiking-Diffusion energy estimate"
    out.append(title + "\n" + "=" * len(title))
    for key in ("model", "weights", "backend", "preset", "time_steps", "n_generated",
                "sampling_steps", "refine_steps", "encoder_input", "seed"):
        if key in m:
            out.append(f"{key.replace('_', ' ')}: {m[key]}")
    for w in m.get("warnings", []):
        out.append(f"NOTE: {w}")
    out.append("")
    out.append("Per layer (per image and call; synops = accumulates from spikes; macs = analog "
               "input at every step, [once] = computed once; Loihi (x2) = two 8-bit synapses "
               "per connection in the fixed-point mapping)")
    hdr = ["layer", "in", "in->out", "neurons", "rate", "synops", "macs [once]", "updates"]
    if show45:
        hdr.append("SNN 45nm")
    if showL:
        hdr.append("Loihi")
    hdr += ["ANN ops", "ANN 45nm"]
    rows = []
    for r in rep["layers"]:
        shp = "x".join(map(str, r["in_shape"])) + "->" + "x".join(map(str, r["out_shape"]))
        row = [r["name"], r["input"], f"{r['kind']} {shp}", fmt_count(r["neurons"]),
               "-" if r["firing_rate"] is None else f"{r['firing_rate']:.3f}",
               fmt_count(r["synops"]),
               f"{fmt_count(r['macs'])} [{fmt_count(r['macs_once'])}]" if r["macs"] else "0",
               fmt_count(r["neuron_updates"])]
        if show45:
            row.append(fmt_energy(r["snn_45nm_pj"]))
        if showL:
            parts = r.get("loihi_synapses_per_connection", 1)
            row.append(fmt_energy(r["loihi_pj"]) + (f" (x{parts})" if parts > 1 else ""))
        ann = (f"{fmt_count(r['ann_adds'])} add" if r.get("ann_adds")
               else f"{fmt_count(r['ann_macs'])} mac")
        row += [ann, fmt_energy(r["ann_45nm_pj"])]
        rows.append(row)
    out.append(_table(rows, hdr))
    out.append("")
    out.append("Per component")
    hdr = ["component", "per", "rate", "synops", "macs", "updates"]
    if show45:
        hdr.append("SNN 45nm")
    if showL:
        hdr.append("Loihi")
    hdr += ["ANN 45nm", "ANN/SNN45" if show45 else "ANN/Loihi"]
    rows = []
    comps = dict(rep["components"])
    comps["TOTAL"] = rep["per_generated_image"]
    for name, c in comps.items():
        per = {"encoder": "real image", "denoiser_call": "image, 1 step", "TOTAL": "generated image",
               "denoiser": f"image, {c.get('calls_per_image', 0):g} steps"}.get(name, "image")
        row = [name, per, f"{c['firing_rate']:.3f}", fmt_count(c["synops"]),
               fmt_count(c["macs"]), fmt_count(c["neuron_updates"])]
        if show45:
            row.append(fmt_energy(c["snn_45nm_pj"]))
        if showL:
            row.append(fmt_energy(c["loihi_pj"]))
        ratio = c["ann_over_snn_45nm"] if show45 else c["ann_over_loihi"]
        row += [fmt_energy(c["ann_45nm_pj"]), "-" if ratio is None else f"{ratio:.2f}x"]
        rows.append(row)
    out.append(_table(rows, hdr))
    t = rep["per_generated_image"]
    out.append("")
    out.append("Per generated image: " + ", ".join(
        ([f"SNN 45nm {fmt_energy(t['snn_45nm_pj'])}"] if show45 else [])
        + ([f"Loihi {fmt_energy(t['loihi_pj'])} (synops {fmt_energy(t['loihi_synops_pj'])}, "
            f"neurons {fmt_energy(t['loihi_neurons_pj'])}, host MACs {fmt_energy(t['loihi_macs_pj'])})"]
           if showL else [])
        + [f"ANN 45nm {fmt_energy(t['ann_45nm_pj'])}"]))
    ratios = []
    if show45 and t["ann_over_snn_45nm"]:
        ratios.append(f"ANN / SNN(45nm) = {t['ann_over_snn_45nm']:.2f}x")
    if showL and t["ann_over_loihi"]:
        ratios.append(f"ANN(45nm) / SNN(Loihi) = {t['ann_over_loihi']:.2f}x")
    if ratios:
        out.append("Energy ratio: " + ", ".join(ratios))
    if "encoder" in rep["components"]:
        out.append("Encoding one real image (not part of generation): "
                   + ", ".join(([f"SNN 45nm {fmt_energy(rep['components']['encoder']['snn_45nm_pj'])}"]
                                if show45 else [])
                               + ([f"Loihi {fmt_energy(rep['components']['encoder']['loihi_pj'])}"]
                                  if showL else [])
                               + [f"ANN {fmt_energy(rep['components']['encoder']['ann_45nm_pj'])}"]))
    bf = rep.get("brute_force_check")
    if bf:
        out.append(f"Brute-force check (all-ones convolutions) on {bf['layers']} spike-fed layers: "
                   + ("all counts agree exactly" if bf["all_agree"] else "MISMATCH"))
    out.append("")
    out.append("Host-side operations (not in the chip energy; rough counts)")
    out.append(_table([[h["step"], h["per"], fmt_count(h["ops"]), h["kind"]] for h in rep["host_ops"]],
                      ["step", "per", "ops", "kind"]))
    out.append("")
    out.append("Constants (pJ)")
    out.append("  " + ", ".join(f"{k}={v:g}" for k, v in rep["constants"].items()))
    out.append(f"  Loihi: {LOIHI_MAC_CHOICE}.")
    out.append("  45 nm: synaptic ops + MACs" + (" + neuron updates" if rep["constants"]
                                                 ["neuron_update_45nm_pj"] else
                                                 "; neuron updates not charged") + ".")
    out.append("  ANN: each layer's cheapest exact form (one-hot-fed: gather and add; else "
               "dense MACs), once per call.")
    out.append("")
    out.append(headline(rep))
    return "\n".join(out)


def headline(rep: dict) -> str:
    """The report's last line: what the spiking model saves per generated image."""
    t = rep["per_generated_image"]
    r45, rL = t["ann_over_snn_45nm"], t["ann_over_loihi"]
    f = lambda r: "-" if r is None else f"{r:.2f}x"
    return (f"Headline, per generated image: ANN/SNN at 45 nm = {f(r45)}; "
            f"ANN(45 nm)/SNN(Loihi) = {f(rL)}")


def summary_line(rep: dict) -> str:
    """One line for the end of a demo: energy per generated image."""
    t = rep["per_generated_image"]
    r = t["ann_over_snn_45nm"]
    return (f"energy per generated image: SNN 45nm {fmt_energy(t['snn_45nm_pj'])}, "
            f"Loihi {fmt_energy(t['loihi_pj'])}, ANN 45nm {fmt_energy(t['ann_45nm_pj'])}"
            + (f" (ANN/SNN {r:.2f}x)" if r else ""))


def save_plot(rep: dict, path, hardware: str = "all", title: str | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    comps = rep["components"]
    S = comps.get("denoiser", {}).get("calls_per_image")
    names = [("encoder", "encoder\n(per real image)"), ("spike_generator", "spike\ngenerator"),
             ("decoder", "decoder"), ("denoiser", f"denoiser\nx{S:g} steps" if S else "denoiser")]
    names = [(k, lbl) for k, lbl in names if k in comps]
    data = [comps[k] for k, _ in names] + [rep["per_generated_image"]]
    labels = [lbl for _, lbl in names] + ["total per\ngenerated image"]
    series = []
    if hardware in ("45nm", "all"):
        series.append(("SNN, 45 nm (AC/MAC)", "snn_45nm_pj", "tab:blue"))
    if hardware in ("loihi", "all"):
        series.append(("SNN, Loihi", "loihi_pj", "tab:orange"))
    series.append(("ANN, 45 nm (MAC)", "ann_45nm_pj", "tab:gray"))
    x = np.arange(len(labels))
    wd = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    allv = [d[key] * 1e-6 for _, key, _ in series for d in data]   # pJ -> uJ
    pos = [v for v in allv if v > 0]
    floor = min(pos) / 5 if pos else 1e-6
    for i, (lbl, key, col) in enumerate(series):
        xs = x + (i - (len(series) - 1) / 2) * wd
        vals = [d[key] * 1e-6 for d in data]
        ax.bar(xs, [v if v > 0 else float("nan") for v in vals], wd, label=lbl, color=col)
        for xi, v in zip(xs, vals):
            if v <= 0:  # nothing to draw on a log axis: say it
                ax.text(xi, floor * 1.3, "0", ha="center", va="bottom", fontsize=8, color=col)
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xticks(x, labels)
    ax.set_ylabel("energy per image (uJ, log scale)")
    ax.set_title(title or "Energy per component")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def write_json(rep: dict, path) -> None:
    import json
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(rep, f, indent=1, default=_jsonable, allow_nan=False)
        f.write("\n")


def _jsonable(o):
    if isinstance(o, (torch.Tensor,)):
        return o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

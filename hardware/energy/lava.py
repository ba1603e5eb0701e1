"""Energy counts from a Lava run: `spikediff-energy report --backend lava`.

``record(model, ...)`` exports the model to a temporary NIR file, generates
images with every spiking layer on Lava (hardware.backends.LavaBackend: the
denoiser at every sampling step, the spike generator and the decoder), encodes
the real images with the encoder on Lava, and feeds the recorded spikes -
aligned to the reference time steps (each layer's synapse delay removed) - into
the shared counting API (``Tally.add_recording``), layer by layer under the
same names as the Norse path (``hardware.energy.counting.model_layers``).

Layers fed analog values (encoder.0 on image currents, spike_generator on code
vectors) cost dense MACs whatever the values; they are given the host-side
static input, as the Norse recorder sees it. So is denoiser.0, whose input is
the one-hot token + step spike grid (the same at every step, counted as spikes).
The decoder's maps come back from Lava in the export's phase-stacked layout and
are turned back to full resolution (pixel_shuffle) before counting.

Same draws as the Norse path (one torch.Generator(seed), batches of
``batch_size``), so in floating_pt the counts equal the Norse ones exactly.
"""
from __future__ import annotations

import torch

from hardware.backends import LavaBackend, TempNir, from_phases


def _static_input(model, tokens, t):
    with torch.no_grad():
        return model.denoiser.network_input(tokens, t).detach()


def record(model, *, n: int = 16, steps=None, seed: int = 0, temperature=None, refine=None,
           real_images=None, tally=None, progress: bool = True, batch_size: int = 64,
           mode: str = "floating_pt") -> dict:
    from spikediff.diffusion import sample_tokens
    from spikediff.progress import bar as progress_bar

    from .counting import Tally, model_layers

    tally = tally if tally is not None else Tally()
    specs = {s.name: s for s in model_layers(model)}
    model = model.eval()
    den, vq = model.denoiser, model.vq
    L_den, L_dec = len(den.layers), len(vq.decoder)
    T_den, T_vq = den.cfg.T, vq.cfg.T
    temp = model.config.diffusion.temperature if temperature is None else temperature
    S = steps or model.diffusion_steps
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    refine = model.config.diffusion.refinement() if refine is None else refine
    info = {"n_generated": n, "sampling_steps": S, "refine_steps": refine.steps, "seed": seed,
            "lava": f"all spiking layers on Lava ({mode}), spikes aligned by layer lag"}
    tmp = TempNir(model)
    lava = None
    try:
        lava = LavaBackend(tmp.path, mode, record_layers=True)

        def denoise(tokens, t):
            logits, rec = lava.denoise_record(tokens, t)
            inputs = {"denoiser.0": _static_input(model, tokens, t)}
            outputs = {}
            for i in range(L_den):
                outputs[f"denoiser.{i}"] = rec[f"layers.{i}.lif"]
                if i:
                    inputs[f"denoiser.{i}"] = rec[f"layers.{i - 1}.lif"]
            inputs["denoiser.head"] = torch.cat([rec[f"layers.{L_den - 1}.lif"],
                                                 rec["layers.0.lif"]], 2)
            tally.add_recording(specs, inputs, outputs, T=T_den)
            return logits

        def decode(tokens):
            images, rec = lava.decode_record(tokens)
            codes = vq.codebook.lookup(tokens).detach()
            tally.add_recording(specs, {"spike_generator": codes},
                                {"spike_generator": rec["spike_generator.lif"]}, T=T_vq)
            full = [rec["spike_generator.lif"]] + [
                from_phases(rec[f"decoder.{i}.lif"], 2 ** (i + 1)) for i in range(L_dec)]
            inputs = {f"decoder.{i}": full[i] for i in range(L_dec)}
            inputs["decoder.readout"] = full[-1]
            outputs = {f"decoder.{i}": full[i + 1] for i in range(L_dec)}
            tally.add_recording(specs, inputs, outputs, T=T_vq)
            # the Norse recorder counts one call per spike-generator pass, none for "decoder"
            tally.calls["decoder"] = tally.calls.get("decoder", 1) - 1
            if not tally.calls["decoder"]:
                del tally.calls["decoder"]
            return images

        gen = []
        bar = progress_bar(total=n * (S + refine.steps),
                           desc="generating on Lava (counting spikes)",
                           unit="img-step", show=progress, leave=False, dynamic_ncols=True)
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            tokens = sample_tokens(denoise, b, model.grid, den.mask_id, model.diffusion_steps,
                                   steps, temp, g, on_step=lambda _: bar.update(b),
                                   refine=refine)
            gen.append(decode(tokens))
        bar.close()
        gen = torch.cat(gen)
        from .report import encoder_input
        enc_in = encoder_input(gen, real_images, n, info)
        L_enc = len(vq.encoder)
        for i in range(0, len(enc_in), batch_size):
            x = enc_in[i:i + batch_size]
            rec = lava.encode_record(x)
            inputs = {"encoder.0": (x - 0.5)}
            outputs = {}
            for j in range(L_enc):
                outputs[f"encoder.{j}"] = rec[f"encoder.{j}.lif"]
                if j:
                    inputs[f"encoder.{j}"] = rec[f"encoder.{j - 1}.lif"]
            tally.add_recording(specs, inputs, outputs, T=T_vq)
        info["n_encoded"] = len(enc_in)
        info["lava_run_s"] = round(lava.lava_s, 2)
    finally:
        if lava is not None:
            lava.close()
        tmp.close()
    return info

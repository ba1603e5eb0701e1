"""Export of the spiking model: NIR (verified by re-running the graph) and ONNX.

- `export.nir_graph.build_graph(model)`: the model as one NIR graph
  (subgraphs encoder, decoder, denoiser; BN folded; exact polyphase ConvT).
- `export.nir_exec.Exported`: re-import and run a written file with the
  project's per-step semantics, host steps included; `verify` compares it
  layer by layer with the Norse model.
- `export.onnx_export`: the same parts as ONNX, unrolled over T.
- `spikediff-export` (`python -m export`): the command line.
"""

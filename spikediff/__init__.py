"""spikediff: Spiking-Diffusion in Norse, exportable to NIR and Lava."""

__version__ = "0.1.0"

"""Hardware back ends for spikediff (see hardware/lava for the Lava/Loihi worker,
hardware/emulator.py for Lava fixed_pt in torch)."""

# The back ends spikediff-run offers (implemented in backends.py) and the Lava
# modes; here, free of torch, so that building the command line stays fast.
BACKENDS = ("norse", "nir", "lava", "emulator")
LAVA_MODES = ("floating_pt", "fixed_pt")

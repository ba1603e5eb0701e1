"""Hardware back ends for spikediff (see hardware/lava for the Lava/Loihi worker)."""

# The back ends spikediff-run offers (implemented in backends.py) and the Lava
# modes; here, free of torch, so that building the command line stays fast.
BACKENDS = ("norse", "nir", "lava")
LAVA_MODES = ("floating_pt", "fixed_pt")

"""Hardware back ends for spikediff (see hardware/lava for the Lava/Loihi worker)."""

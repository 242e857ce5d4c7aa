"""What the CLI and the app start from when nobody says otherwise, each said once here."""
from __future__ import annotations

DATASET = "digits"  # built in and offline: every first run works
METHOD = "dm"  # the cheapest matching method that learns images (DM)
IPC = 10  # images per class
PRESET = "fast"  # methods/base.PRESETS: sized for a CPU
PROTOCOL = "fast"  # evaluate.PROTOCOLS: the DSA recipe at 300 epochs
SEED = 0
INIT = "real"  # synthetic images start as random real images of their class ("noise": Gaussian)

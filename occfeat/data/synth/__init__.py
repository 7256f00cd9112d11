"""The synthetic nuScenes-format world: ``write_dataroot(out, SynthConfig(...))``."""

from occfeat.data.synth.writer import SynthConfig, write_dataroot

__all__ = ["SynthConfig", "write_dataroot"]

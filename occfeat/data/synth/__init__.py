"""The synthetic nuScenes-format world: ``write_dataroot(out, SynthConfig(...))``."""

from occfeat.data.synth.writer import SynthConfig, is_complete, write_dataroot

__all__ = ["SynthConfig", "is_complete", "write_dataroot"]

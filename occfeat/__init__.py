"""occfeat: self-supervised OccFeat pretraining of camera-only BEV segmentation networks.

Pipeline (one subpackage per stage): ``data`` (index, synth, voxelize, teacher targets) →
``models`` (encoders, lifting, decoders, heads, networks) → ``losses`` → ``train`` → ``report``.
"""

__version__ = "0.1.0"

"""Training: the generic loop (:mod:`loop`), DDP helpers (:mod:`dist`), camera data and augmentation
(:mod:`data`), and the OccFeat pretraining task (:mod:`pretrain`)."""

"""Training: the generic loop (:mod:`loop`), DDP helpers (:mod:`dist`), camera data and augmentation
(:mod:`data`), the OccFeat pretraining task (:mod:`pretrain`) and finetuning (:mod:`finetune`, with the
labelled subset in :mod:`labels` and the model it starts from in :mod:`init`)."""

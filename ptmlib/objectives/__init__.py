"""Part II helpers, one topic per module: `denoising` (objectives as data transforms), `rtd` (replaced-token
detection), `scaling` (scaling laws, schedules), `selfsup` (self-supervised signals), `efficient`
(memory- and compute-efficient pretraining: per-member optimizers, sparsity, binarisation), `compact` (growth and
distillation), `elastic` (sub-networks, stitching, early exits, layer chains) and `diffusion` (diffusion models
and their steering)."""

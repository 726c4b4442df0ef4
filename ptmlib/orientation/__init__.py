"""Part 0 helpers: why pretrain (self-pretraining, label efficiency) and what transfers (a zoo of differently pretrained backbones, transferability scores)."""

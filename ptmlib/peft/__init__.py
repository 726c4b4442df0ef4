"""Part III helpers, one topic per module: `adapters` (LoRA, IA3, bottleneck adapters, prompt tuning, the
layer-swapping `replace_linears`), `finetune` (a BERT classifier per PEFT method and what each costs), `levi`
(layer-wise ensembles), `merging` (soups, task vectors, checkpoint combinations, emulated fine-tuning),
`spectral` (SVFit, SaRA, PELA compression, grafting), `kind` (KIND's common and class-specific components),
`blackbox` (visual prompts and SPSA), `active` (active learning), `crossmodal` (P2P rendering, two-tower
contrastive training, a small distillation student), `interpret` (B-cos, concept bottlenecks)."""

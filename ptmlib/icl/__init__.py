"""Part I helpers: in-context regression data, classical estimators, linear self-attention, transformers, PFNs, pretraining theory."""

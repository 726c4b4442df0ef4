"""Part IV helpers: continual-learning streams, metrics, replay, regularisers and sequential training."""

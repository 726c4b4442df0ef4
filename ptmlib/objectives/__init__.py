"""Part II helpers: pretraining objectives as data transforms, replaced-token detection, scaling laws."""

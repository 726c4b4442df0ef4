"""The book's tooling: the `ptm` command, the chapter runner, the report, student notebooks, benchmarks,
the site check and a Sphinx extension. No chapter imports this package, and the code digest that keys
caches and checkpoints (`ptmlib.train.code_version`) leaves it out, so editing the tooling never
invalidates a trained model."""

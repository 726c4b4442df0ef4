"""Part V helpers: a pseudo-spectral PDE solver, neural operators, time-series priors and forecasters,
`earth` (a barotropic atmosphere with a tracer, masked-forecast pretraining), `biomed` (simulated ECGs and
multi-contrast scans, JEPA and masked autoencoders) and `decision` (a two-link arm with an LQR expert,
dynamics pretraining, action-state transformers)."""

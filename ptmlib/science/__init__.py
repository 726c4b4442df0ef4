"""Part V helpers: a pseudo-spectral PDE solver, neural operators, time-series priors and forecasters."""

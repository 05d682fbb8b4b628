//! Experiment grids (placeholder, filled in next).

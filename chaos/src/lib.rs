//! Simulation and fault tests (issue 6). Empty for now.

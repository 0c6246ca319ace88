//! Load generator (issue 4).

//! Transport-free layer (todo).

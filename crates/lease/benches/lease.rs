//! Lease benchmark.
fn main() {}

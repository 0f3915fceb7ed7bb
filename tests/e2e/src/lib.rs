//! End-to-end tests of the OmniMesh binaries live in `tests/`; this library is empty.
//!
//! They run the binaries cargo built next to the test executable (`target/<profile>/`),
//! so `cargo build --workspace --bins` must run first: `make test` does.

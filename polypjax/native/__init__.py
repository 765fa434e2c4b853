"""Native CPU kernels, built on first use and called from jitted code as XLA FFI targets."""

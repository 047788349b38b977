//! Plugin discovery, manifests, the native (C ABI) loader and the WASM component loader.

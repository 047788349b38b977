//! The on-disk cache of compiled components.

use std::hash::Hasher;
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::engine::engine;
use crate::plugins::PluginError;

/// A `Hasher` over SHA-256, so cache keys are stable across Rust versions.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]))
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The cache file name for a component: content hash + engine compatibility hash.
pub fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let content = hex::encode(Sha256::digest(bytes));
    let mut hasher = ShaHasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    format!("{content}-{:016x}.cwasm", hasher.finish())
}

/// Compiles a component, or reads it from the cache. Returns whether it came from the cache.
pub fn compile(
    bytes: &[u8],
    path: &Path,
    cache_dir: Option<&Path>,
) -> Result<(Component, bool), PluginError> {
    let engine = engine()?;
    let compile_error = |e: wasmtime::Error| PluginError::WasmCompile {
        path: path.to_owned(),
        reason: format!("{e:#}"),
    };
    let Some(cache_dir) = cache_dir else {
        return Ok((Component::new(engine, bytes).map_err(compile_error)?, false));
    };
    let cached = cache_dir.join(cache_key(engine, bytes));
    if cached.is_file() {
        // SAFETY: the file was written by `Component::serialize` below into the host's own
        // state directory; wasmtime checks the engine compatibility header itself.
        match unsafe { Component::deserialize_file(engine, &cached) } {
            Ok(component) => return Ok((component, true)),
            Err(e) => {
                tracing::warn!(file = %cached.display(), error = %e, "dropping unusable compiled component");
                let _ = std::fs::remove_file(&cached);
            }
        }
    }
    let component = Component::new(engine, bytes).map_err(compile_error)?;
    match component.serialize() {
        Ok(serialized) => {
            // The cache lives under the private state directory: written like every file
            // there (0700 directory, 0600 file, fsync, rename).
            if let Err(e) = crate::fsutil::write_private_atomic(&cached, &serialized) {
                tracing::warn!(file = %cached.display(), error = %e, "cannot cache compiled component");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot serialize compiled component"),
    }
    Ok((component, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys_follow_the_content() {
        let engine = engine().unwrap();
        let a = cache_key(engine, b"one");
        assert_eq!(a, cache_key(engine, b"one"));
        assert_ne!(a, cache_key(engine, b"two"));
        assert!(a.ends_with(".cwasm"));
    }
}

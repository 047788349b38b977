//! Writes the example WASM plugin (`backends/examples/wasm/echo.wat`, built into a component
//! with `wat` + `wit-component`) and its `plugin.toml` into a directory, ready for
//! `agentserver plugins install DIR`.
//!
//! ```text
//! cargo run -p agentserver --example build_wasm_example -- /tmp/wasm-example
//! agentserver plugins install /tmp/wasm-example
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use agentserver::plugins::wasm::bundled;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: build_wasm_example DIR");
        return ExitCode::FAILURE;
    };
    let bytes = match bundled::component_bytes() {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("wasm-example.wasm"), &bytes))
        .and_then(|()| std::fs::write(dir.join("plugin.toml"), bundled::MANIFEST));
    if let Err(e) = written {
        eprintln!("error: writing into {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    println!(
        "wrote {} ({} bytes) and plugin.toml",
        dir.join("wasm-example.wasm").display(),
        bytes.len()
    );
    ExitCode::SUCCESS
}

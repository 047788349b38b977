//! Plugin benchmark: native load time, WASM cold compile, cached load, per-task
//! instantiation, and the call overhead of a no-op `execute` for a native plugin (Rust and C),
//! a WASM component and a built-in Rust backend, with ratios.
//!
//! Run it optimised (debug builds of cranelift are many times slower):
//!
//! ```text
//! cargo run --release -p agentserver --example plugin_bench [-- ITERATIONS] [--json]
//! ```
//!
//! `--json` adds one `BENCH-JSON {...}` line at the end (the rows `agentserver-bench` reads).
//!
//! It needs the native Rust example built in the same profile (it is a dev-dependency of the
//! host, so cargo builds it first) and a C compiler (`cc`) for the C example.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentserver::plugins::Permissions;
use agentserver::plugins::native::{NativeBackend, load_library};
use agentserver::plugins::wasm::{self, ComponentSettings, bundled};
use agentserver_plugin_api::{
    Backend, BackendInfo, CancellationToken, EventSink, SessionType, Task, TaskOutcome,
};
use async_trait::async_trait;

/// The built-in baseline: a backend compiled into the host that does nothing.
struct BuiltinNoop;

#[async_trait]
impl Backend for BuiltinNoop {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "builtin-noop".into(),
            version: "0".into(),
            session_type: SessionType::Custom,
        }
    }

    async fn execute(
        &self,
        _task: Task,
        _events: EventSink,
        _cancel: CancellationToken,
    ) -> TaskOutcome {
        TaskOutcome::completed("")
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("examples live in target/<profile>/examples")
        .to_owned()
}

fn native_rust_example() -> PathBuf {
    let stem = format!(
        "{}agentserver_example_native_rust",
        std::env::consts::DLL_PREFIX
    );
    let profile = profile_dir();
    let mut found: Vec<PathBuf> = [profile.clone(), profile.join("deps")]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&stem) && n.ends_with(std::env::consts::DLL_SUFFIX)
            })
        })
        .collect();
    found.sort_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    found.pop().expect(
        "build the native Rust example first (cargo build -p agentserver-example-native-rust)",
    )
}

fn build_c_example(out: &Path) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.to_owned();
    let lib = out.join("libecho_c.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-I"])
        .arg(root.join("plugin-api/include"))
        .arg(root.join("backends/examples/native-c/echo_plugin.c"))
        .arg("-o")
        .arg(&lib)
        .status()
        .ok()?;
    status.success().then_some(lib)
}

async fn per_call(backend: &Arc<dyn Backend>, iterations: u32) -> Duration {
    let task = Task {
        task_id: "task_bench".into(),
        prompt: "noop".into(),
        ..Task::default()
    };
    // Warm up.
    for _ in 0..iterations / 10 + 1 {
        let (sink, _rx) = EventSink::channel(4);
        backend
            .execute(task.clone(), sink, CancellationToken::new())
            .await;
    }
    let start = Instant::now();
    for _ in 0..iterations {
        let (sink, _rx) = EventSink::channel(4);
        let outcome = backend
            .execute(task.clone(), sink, CancellationToken::new())
            .await;
        assert_eq!(outcome.result.as_deref(), Some(""), "{outcome:?}");
    }
    start.elapsed() / iterations
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let iterations: u32 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(2000);
    let samples = 10;
    let tmp = tempfile::tempdir().expect("temp dir");
    println!(
        "agentserver plugin benchmark ({iterations} calls per backend, median of {samples} for loads)"
    );
    println!();

    // Native load time: every copy is a distinct library for the dynamic loader.
    let rust_lib = native_rust_example();
    let mut loads = Vec::new();
    let mut last = None;
    for i in 0..samples {
        let copy = tmp.path().join(format!("librust_{i}.so"));
        std::fs::copy(&rust_lib, &copy).expect("copy library");
        let start = Instant::now();
        let lib = load_library(&copy).expect("load native example");
        lib.describe().expect("describe");
        loads.push(start.elapsed());
        last = Some(lib);
    }
    let rust_native = last.expect("loaded");
    let native_load = median(loads);
    println!(
        "native load (dlopen + entry + checks + describe), Rust example: {}",
        ms(native_load)
    );

    let c_native =
        build_c_example(tmp.path()).map(|lib| load_library(&lib).expect("load C example"));

    // WASM: cold compile, cached load, instantiation.
    let bytes = bundled::component_bytes().expect("build example component");
    let cache_dir = tmp.path().join("cache");
    let compiles: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            wasm::compile(&bytes, Path::new("example.wasm"), None).expect("compile");
            start.elapsed()
        })
        .collect();
    let cold = median(compiles);
    println!(
        "WASM cold compile (bundled example, {} bytes): {}",
        bytes.len(),
        ms(cold)
    );
    wasm::compile(&bytes, Path::new("example.wasm"), Some(&cache_dir)).expect("fill cache");
    let cached: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            let (_, from_cache) =
                wasm::compile(&bytes, Path::new("example.wasm"), Some(&cache_dir)).expect("cached");
            assert!(from_cache);
            start.elapsed()
        })
        .collect();
    let cached = median(cached);
    println!("WASM cached load (deserialize from disk): {}", ms(cached));

    let settings = ComponentSettings {
        name: "wasm-example".into(),
        version: "0.1.0".into(),
        permissions: Permissions::default(),
        asked_http: Vec::new(),
        memory_cap_bytes: 16 << 20,
        timeout: Duration::from_secs(60),
        cancel_grace: Duration::from_secs(1),
        cache_dir: Some(cache_dir),
    };
    let loaded = wasm::load_component(&bytes, Path::new("example.wasm"), &settings).expect("load");
    let inst: Vec<Duration> = (0..200)
        .map(|_| {
            let start = Instant::now();
            loaded.backend.instantiate_once().expect("instantiate");
            start.elapsed()
        })
        .collect();
    let inst = median(inst);
    println!(
        "WASM per-task instantiation (fresh store + instance): {}",
        us(inst)
    );
    println!();

    let builtin: Arc<dyn Backend> = Arc::new(BuiltinNoop);
    let native_rust: Arc<dyn Backend> = Arc::new(NativeBackend::new(
        "native-rust-example",
        rust_native,
        Duration::from_secs(60),
        Duration::from_secs(1),
    ));
    let wasm_backend: Arc<dyn Backend> = Arc::new(loaded.backend);

    let t_builtin = per_call(&builtin, iterations).await;
    let t_rust = per_call(&native_rust, iterations).await;
    let t_c = match c_native {
        Some(lib) => {
            let c: Arc<dyn Backend> = Arc::new(NativeBackend::new(
                "native-c-example",
                lib,
                Duration::from_secs(60),
                Duration::from_secs(1),
            ));
            Some(per_call(&c, iterations).await)
        }
        None => None,
    };
    let t_wasm = per_call(&wasm_backend, iterations).await;
    let ratio = |t: Duration| t.as_secs_f64() / t_builtin.as_secs_f64();
    println!("no-op execute, per call (ratio to the built-in Rust backend):");
    println!("  built-in Rust backend: {}  (1.0x)", us(t_builtin));
    println!(
        "  native Rust plugin:    {}  ({:.1}x)",
        us(t_rust),
        ratio(t_rust)
    );
    if let Some(t_c) = t_c {
        println!("  native C plugin:       {}  ({:.1}x)", us(t_c), ratio(t_c));
    }
    println!(
        "  WASM component:        {}  ({:.1}x)",
        us(t_wasm),
        ratio(t_wasm)
    );
    println!(
        "  WASM / native Rust:    {:.1}x",
        t_wasm.as_secs_f64() / t_rust.as_secs_f64()
    );
    if json {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let row = |measure: &str, base: Option<(&str, f64)>, value: f64| {
            serde_json::json!({"measure": measure, "unit": "µs", "baseline": base.map(|b| b.0),
                "baseline_value": base.map(|b| b.1), "value": value})
        };
        let builtin = Some(("built-in Rust backend", us(t_builtin)));
        let mut rows = vec![row(
            "no-op execute, native Rust plugin",
            builtin,
            us(t_rust),
        )];
        if let Some(t_c) = t_c {
            rows.push(row("no-op execute, native C plugin", builtin, us(t_c)));
        }
        rows.push(row("no-op execute, WASM component", builtin, us(t_wasm)));
        rows.push(row("native load, Rust example", None, us(native_load)));
        rows.push(row(
            "WASM cached load",
            Some(("WASM cold compile", us(cold))),
            us(cached),
        ));
        rows.push(row("WASM per-task instantiation", None, us(inst)));
        println!(
            "BENCH-JSON {}",
            serde_json::json!({"bench": "plugins", "rows": rows})
        );
    }
}

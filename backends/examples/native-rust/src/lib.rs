//! An example native agentserver backend plugin, written in Rust through
//! [`agentserver_plugin_sdk::export_native_plugin!`]. Copy this crate to start your own.
//!
//! Build it with `cargo build -p agentserver-example-native-rust --release`; the plugin is
//! `target/release/libagentserver_example_native_rust.so` (`.dylib` on macOS). Install it with
//! a `plugin.toml` next to it (see `plugin.toml` in this folder and `docs/plugins.md`).
//!
//! What it does, by prompt:
//! - `panic`: panics (the macro turns that into a failed task);
//! - `wait-for-cancel`: emits one event, then polls the cancellation flag until it is set;
//! - `noop`: returns at once without emitting anything (used by the benchmark);
//! - anything else: emits a `started` event, one `echo` event per word of the prompt, and
//!   completes with the prompt reversed word by word.

use std::time::Duration;

use agentserver_plugin_sdk::ffi::PluginDescription;
use agentserver_plugin_sdk::native::{LogLevel, NativeContext, NativePlugin};
use agentserver_plugin_sdk::{FailureKind, Task, TaskOutcome};
use serde_json::json;

/// The example plugin. Stateless: every task is independent.
#[derive(Debug, Default)]
pub struct EchoPlugin;

impl NativePlugin for EchoPlugin {
    fn describe(&self) -> PluginDescription {
        PluginDescription {
            name: "native-rust-example".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Echoes the prompt word by word (native Rust example)".into(),
        }
    }

    fn execute(&self, task: Task, ctx: &NativeContext<'_>) -> TaskOutcome {
        match task.prompt.as_str() {
            "noop" => return TaskOutcome::completed(""),
            "panic" => panic!("the example plugin was asked to panic"),
            "wait-for-cancel" => {
                ctx.emit(&json!({"type": "waiting", "task_id": task.task_id}));
                // Bounded so a host bug cannot leave the thread spinning for ever.
                for _ in 0..60_000 {
                    if ctx.is_cancelled() {
                        return TaskOutcome::cancelled("cancelled by the host");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                return TaskOutcome::failed(FailureKind::System, "never cancelled");
            }
            _ => {}
        }
        ctx.log(LogLevel::Info, &format!("running {}", task.task_id));
        if !ctx.emit(&json!({"type": "started", "task_id": task.task_id})) {
            return TaskOutcome::cancelled("the host stopped listening");
        }
        let words: Vec<&str> = task.prompt.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            if ctx.is_cancelled() {
                return TaskOutcome::cancelled("cancelled by the host");
            }
            ctx.emit(&json!({"type": "echo", "index": i, "word": word}));
        }
        let reversed: Vec<&str> = words.iter().rev().copied().collect();
        TaskOutcome {
            num_turns: Some(1),
            ..TaskOutcome::completed(reversed.join(" "))
        }
    }
}

agentserver_plugin_sdk::export_native_plugin!(EchoPlugin);

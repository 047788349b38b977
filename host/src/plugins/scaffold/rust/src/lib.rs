//! {{name}}: a native agentserver backend plugin in Rust (written by `agentserver plugins
//! new`). It answers every prompt with one assistant event and completes; the prompt "wait"
//! waits for cancellation. Build: sh build.sh. Test: sh test.sh (and `cargo test`).

use std::time::Duration;

use agentserver_plugin_sdk::ffi::PluginDescription;
use agentserver_plugin_sdk::native::{NativeContext, NativePlugin};
use agentserver_plugin_sdk::{Task, TaskOutcome};
use serde_json::json;

/// The plugin.
#[derive(Debug, Default)]
pub struct Plugin;

/// The answer to a prompt.
pub fn answer(prompt: &str) -> String {
    format!("You said: {prompt}")
}

impl NativePlugin for Plugin {
    fn describe(&self) -> PluginDescription {
        PluginDescription {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Says what it was asked".into(),
        }
    }

    fn execute(&self, task: Task, ctx: &NativeContext<'_>) -> TaskOutcome {
        if task.prompt == "wait" {
            while !ctx.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            return TaskOutcome::cancelled("cancelled by the host");
        }
        let text = answer(&task.prompt);
        let event = json!({"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}});
        if !ctx.emit(&event) {
            return TaskOutcome::cancelled("the host stopped listening");
        }
        TaskOutcome {
            num_turns: Some(1),
            ..TaskOutcome::completed(text)
        }
    }
}

agentserver_plugin_sdk::export_native_plugin!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_says_what_it_was_asked() {
        assert_eq!(answer("hi"), "You said: hi");
        assert_eq!(Plugin.describe().name, "{{name}}");
    }
}

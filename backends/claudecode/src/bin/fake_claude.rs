//! `fake-claude`: a scripted stand-in for the `claude` CLI, for the driver tests.
//!
//! It runs the operations in `$FAKE_CLAUDE_SCRIPT` (one per line) and exits 0 at the end.
//! Without a script it behaves like a well-mannered `claude`: reads the two stdin lines, prints
//! an init, an assistant message and a result, waits for stdin to close and exits.
//!
//! | operation | effect |
//! |---|---|
//! | `args` | prints `{"type":"fake_args","args":[…],"cwd":"…"}` |
//! | `env NAME` | prints `{"type":"fake_env","name":…,"value":…}` |
//! | `read` | reads one stdin line, prints `{"type":"fake_stdin","line":<it, parsed>}` (or `fake_stdin_eof`) |
//! | `wait_eof` | reads stdin until it closes, then prints `{"type":"fake_eof"}` |
//! | `out TEXT` | prints TEXT as one stdout line |
//! | `err TEXT` | prints TEXT as one stderr line |
//! | `big N` | prints one JSON line of exactly N bytes (`{"type":"assistant","pad":"xxx…"}`) |
//! | `result TEXT` | prints a successful `result` message with result TEXT |
//! | `sleep MS` | sleeps |
//! | `hang` | sleeps forever |
//! | `ignore_term` | ignores SIGTERM from now on |
//! | `spawn_sleeper` | starts `sleep 300` (same process group), prints `{"type":"fake_child","pid":N}` |
//! | `close_stdout` | closes stdout |
//! | `exit CODE` | exits with CODE |

use std::io::{BufRead, Write};

fn main() {
    let script = std::env::var("FAKE_CLAUDE_SCRIPT").unwrap_or_else(|_| {
        [
            "read",
            "read",
            r#"out {"type":"system","subtype":"init","session_id":"fake-session"}"#,
            r#"out {"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"hi"}]}}"#,
            "result hi",
            "wait_eof",
        ]
        .join("\n")
    });
    let stdin = std::io::stdin();
    let mut stdin = stdin.lock();
    for op in script.lines() {
        let op = op.trim_start();
        if op.is_empty() {
            continue;
        }
        let (name, arg) = op.split_once(' ').unwrap_or((op, ""));
        match name {
            "args" => {
                let args: Vec<String> = std::env::args().skip(1).collect();
                let cwd = std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default();
                emit(
                    &serde_json::json!({"type": "fake_args", "args": args, "cwd": cwd}).to_string(),
                );
            }
            "env" => {
                let value = std::env::var(arg).ok();
                emit(
                    &serde_json::json!({"type": "fake_env", "name": arg, "value": value})
                        .to_string(),
                );
            }
            "read" => {
                let mut line = String::new();
                match stdin.read_line(&mut line) {
                    Ok(0) | Err(_) => emit(r#"{"type":"fake_stdin_eof"}"#),
                    Ok(_) => {
                        let value: serde_json::Value = serde_json::from_str(line.trim())
                            .unwrap_or_else(|_| serde_json::Value::String(line.clone()));
                        emit(&serde_json::json!({"type": "fake_stdin", "line": value}).to_string());
                    }
                }
            }
            "wait_eof" => {
                let mut line = String::new();
                while matches!(stdin.read_line(&mut line), Ok(n) if n > 0) {
                    line.clear();
                }
                emit(r#"{"type":"fake_eof"}"#);
            }
            "out" => emit(arg),
            "err" => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{arg}");
            }
            "big" => {
                let n: usize = arg.parse().unwrap_or(0);
                let head = r#"{"type":"assistant","pad":""#;
                let tail = r#""}"#;
                let pad = n.saturating_sub(head.len() + tail.len());
                emit(&format!("{head}{}{tail}", "x".repeat(pad)));
            }
            "result" => emit(
                &serde_json::json!({"type": "result", "subtype": "success", "is_error": false,
                    "num_turns": 1, "result": arg, "total_cost_usd": 0.01,
                    "terminal_reason": "completed", "session_id": "fake-session"})
                .to_string(),
            ),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(arg.parse().unwrap_or(0)))
            }
            "hang" => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            "ignore_term" => {
                // SAFETY: installing SIG_IGN has no handler code to run.
                let _ = unsafe {
                    nix::sys::signal::signal(
                        nix::sys::signal::Signal::SIGTERM,
                        nix::sys::signal::SigHandler::SigIgn,
                    )
                };
            }
            "spawn_sleeper" => {
                let child = std::process::Command::new("sleep")
                    .arg("300")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("spawn sleep");
                emit(&serde_json::json!({"type": "fake_child", "pid": child.id()}).to_string());
                std::mem::forget(child);
            }
            "close_stdout" => {
                let _ = std::io::stdout().flush();
                // SAFETY: closing fd 1; nothing in this program uses stdout afterwards.
                unsafe { libc::close(1) };
            }
            "exit" => std::process::exit(arg.parse().unwrap_or(0)),
            other => {
                eprintln!("fake-claude: unknown operation {other:?}");
                std::process::exit(99);
            }
        }
    }
}

fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

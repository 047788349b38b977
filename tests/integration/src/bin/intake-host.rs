//! A minimal host for process-level intake tests: the real [`agentserver::intake`] with the
//! test backend and the real signal handling, configured by flags. Not shipped.
//!
//! Flags: `--server URL --proxy-token T --sandbox-id ID [--poll-ms N] [--grace-ms N]
//! [--max-concurrent N] [--report-initial-ms N] [--report-max-ms N] [--shutdown-report-ms N]`.
//! The outbox lives under `$AGENTSERVER_HOME/outbox`. Prints `intake-host ready` on stderr once
//! the signal handlers are installed. Exit code: 0 when drained, 130 on a forced exit.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentserver::intake::{Intake, IntakeConfig};
use agentserver::secret::Secret;
use agentserver::shutdown::{FORCE_EXIT_CODE, ShutdownSignals, follow_signals};
use agentserver_integration::test_backend::TestBackend;

fn main() -> ExitCode {
    tracing_subscriber_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let ms = |name: &str, default: u64| -> Duration {
        Duration::from_millis(get(name).and_then(|v| v.parse().ok()).unwrap_or(default))
    };
    let (Some(server), Some(token), Some(sandbox)) =
        (get("--server"), get("--proxy-token"), get("--sandbox-id"))
    else {
        eprintln!("usage: intake-host --server URL --proxy-token T --sandbox-id ID [options]");
        return ExitCode::from(2);
    };
    let mut config = IntakeConfig::new(
        server,
        Secret::new(token),
        sandbox,
        std::env::current_dir().unwrap_or_default(),
    );
    config.poll_interval = ms("--poll-ms", 100);
    config.grace_period = ms("--grace-ms", 30_000);
    config.report_backoff_initial = ms("--report-initial-ms", 100);
    config.report_backoff_max = ms("--report-max-ms", 1000);
    config.shutdown_report_timeout = ms("--shutdown-report-ms", 5000);
    config.cancel_timeout = ms("--cancel-timeout-ms", 5000);
    config.max_concurrent_tasks = get("--max-concurrent")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let intake = match Intake::new(config, Arc::new(TestBackend::new())) {
            Ok(i) => i,
            Err(err) => {
                eprintln!("Error: {err}");
                return ExitCode::FAILURE;
            }
        };
        let signals = match ShutdownSignals::install() {
            Ok(w) => w,
            Err(err) => {
                eprintln!("Error: cannot install signal handlers: {err}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!("intake-host ready");
        // The stages as the binary follows them, saying what it says.
        let follow = follow_signals(signals, intake.handle(), |stage| {
            if let Some(text) = stage.notice() {
                eprintln!("{text}");
            }
        });
        tokio::select! {
            r = intake.run() => match r {
                Ok(summary) => {
                    eprintln!("intake-host drained: {summary:?}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("Error: {err}");
                    ExitCode::FAILURE
                }
            },
            () = follow => ExitCode::from(FORCE_EXIT_CODE),
        }
    })
}

fn tracing_subscriber_init() {
    // Logs only when RUST_LOG is set (keeps test output quiet).
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
}

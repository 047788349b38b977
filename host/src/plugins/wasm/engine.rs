//! The shared wasmtime engine and the epoch ticker that makes deadlines fire.

use std::path::PathBuf;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::{Config, Engine};

use crate::plugins::PluginError;

/// How often the epoch ticks while WASM tasks run; the precision of deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The shared engine (component model, epoch interruption).
pub fn engine() -> Result<&'static Engine, PluginError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config.wasm_component_model(true);
            config.epoch_interruption(true);
            Engine::new(&config).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|reason| PluginError::WasmCompile {
            path: PathBuf::from("<engine>"),
            reason: reason.clone(),
        })
}

/// Bumps the engine's epoch while at least one task runs; sleeps otherwise.
struct Ticker {
    active: Mutex<usize>,
    wake: Condvar,
}

/// Keeps the ticker running while alive.
pub(super) struct TickGuard(&'static Ticker);

impl Drop for TickGuard {
    fn drop(&mut self) {
        let mut active = self.0.active.lock().unwrap_or_else(|e| e.into_inner());
        *active = active.saturating_sub(1);
    }
}

pub(super) fn tick_while_running(engine: &'static Engine) -> TickGuard {
    static TICKER: OnceLock<&'static Ticker> = OnceLock::new();
    let ticker = *TICKER.get_or_init(|| {
        let ticker: &'static Ticker = Box::leak(Box::new(Ticker {
            active: Mutex::new(0),
            wake: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("agentserver-wasm-epoch".into())
            .spawn(move || {
                loop {
                    {
                        let mut active = ticker.active.lock().unwrap_or_else(|e| e.into_inner());
                        while *active == 0 {
                            active = ticker.wake.wait(active).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the WASM epoch thread; deadlines will not fire");
        }
        ticker
    });
    *ticker.active.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    ticker.wake.notify_all();
    TickGuard(ticker)
}

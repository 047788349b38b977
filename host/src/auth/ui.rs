//! What the user sees during a device login.
//!
//! [`TerminalLoginUi`] follows spec §2.3/§2.5: the URL and user code on **stdout**, a QR code of
//! the URL on **stderr**, the browser opened unless told not to (a failure is only logged),
//! `Waiting for authentication...`, then a spinner with a countdown on stderr (hidden when
//! stderr is not a terminal). [`QuietLoginUi`] shows nothing (logs only), for embedding and
//! tests.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::device::{LoginError, PollEvent};

/// The device code as the user must see it.
#[derive(Debug, Clone, Copy)]
pub struct DevicePrompt<'a> {
    /// URL to open (`verification_uri_complete`, else `verification_uri`).
    pub url: &'a str,
    /// Code to type (may be empty).
    pub user_code: &'a str,
    /// The plain verification page.
    pub verification_uri: &'a str,
    /// How long the code stays valid.
    pub expires_in: Duration,
    /// The poll interval.
    pub interval: Duration,
}

/// Progress callbacks of a login. Implementations must not block.
pub trait LoginUi: Send + Sync {
    /// The device code is ready: show the URL and code.
    fn show_code(&self, prompt: &DevicePrompt<'_>);
    /// One poll round ended without a result.
    fn poll_event(&self, event: &PollEvent) {
        let _ = event;
    }
    /// The user approved; the tokens are about to be saved.
    fn authenticated(&self) {}
    /// The credentials were saved at `path`.
    fn saved(&self, path: &Path) {
        let _ = path;
    }
    /// The login failed or was cancelled.
    fn failed(&self, error: &LoginError) {
        let _ = error;
    }
}

/// Shows nothing; logs the prompt at info level (the URL and user code are not secrets).
#[derive(Debug, Default, Clone, Copy)]
pub struct QuietLoginUi;

impl LoginUi for QuietLoginUi {
    fn show_code(&self, prompt: &DevicePrompt<'_>) {
        tracing::info!(url = %prompt.url, user_code = %prompt.user_code, "device login waiting for approval");
    }
}

/// The interactive terminal login display.
#[derive(Debug)]
pub struct TerminalLoginUi {
    open_browser: bool,
    spinner: Mutex<Option<ProgressBar>>,
}

impl TerminalLoginUi {
    /// A terminal display; `open_browser` false is `--skip-open-browser`.
    pub fn new(open_browser: bool) -> Self {
        Self {
            open_browser,
            spinner: Mutex::new(None),
        }
    }

    fn stop_spinner(&self) {
        if let Some(bar) = self.spinner.lock().ok().and_then(|mut s| s.take()) {
            bar.finish_and_clear();
        }
    }

    fn start_spinner(&self, expires_in: Duration) {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let deadline = Instant::now() + expires_in;
        let style = ProgressStyle::with_template("{spinner} {msg} (code expires in {remaining})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .with_key(
                "remaining",
                move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let left = deadline.saturating_duration_since(Instant::now()).as_secs();
                    let _ = write!(w, "{}:{:02}", left / 60, left % 60);
                },
            );
        let bar = ProgressBar::with_draw_target(None, target)
            .with_style(style)
            .with_message("Waiting for approval in the browser");
        bar.enable_steady_tick(Duration::from_millis(120));
        if let Ok(mut slot) = self.spinner.lock() {
            *slot = Some(bar);
        }
    }
}

impl LoginUi for TerminalLoginUi {
    fn show_code(&self, prompt: &DevicePrompt<'_>) {
        println!();
        println!("To authenticate, visit:");
        println!("  {}", prompt.url);
        println!();
        if !prompt.user_code.is_empty() {
            println!(
                "Or enter code: {} at {}",
                prompt.user_code, prompt.verification_uri
            );
        }
        match qr2term::generate_qr_string(prompt.url) {
            // With JSON logs stderr holds only JSON lines: the code goes with the prompt.
            Ok(qr) if crate::logging::json_logs() => print!("{qr}"),
            Ok(qr) => eprint!("{qr}"),
            Err(err) => tracing::debug!(%err, "cannot render the QR code"),
        }
        if self.open_browser {
            let url = prompt.url.to_owned();
            // Opening may spawn a process and wait for it; never block the poll loop on it.
            std::thread::spawn(move || {
                if let Err(err) = webbrowser::open(&url) {
                    tracing::info!(%err, "could not open a browser; open the URL above by hand");
                }
            });
        }
        println!("Waiting for authentication...");
        self.start_spinner(prompt.expires_in);
    }

    fn poll_event(&self, event: &PollEvent) {
        if let PollEvent::SlowDown { interval } = event
            && let Ok(slot) = self.spinner.lock()
            && let Some(bar) = slot.as_ref()
        {
            bar.set_message(format!(
                "Waiting for approval in the browser (polling every {} s)",
                interval.as_secs()
            ));
        }
    }

    fn authenticated(&self) {
        self.stop_spinner();
        println!("Authentication successful!");
    }

    fn saved(&self, _path: &Path) {
        println!("Login successful! Credentials saved.");
    }

    fn failed(&self, _error: &LoginError) {
        self.stop_spinner();
    }
}

impl Drop for TerminalLoginUi {
    fn drop(&mut self) {
        self.stop_spinner();
    }
}

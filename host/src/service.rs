//! Service definitions for `agentserver service install`: a systemd unit (user or system) and a
//! launchd property list, rendered from one small typed [`ServiceSpec`]. Rendering only: writing
//! the files and calling `systemctl`/`launchctl` is the command's work.
//!
//! The stop settings are the drain-aware ones of docs/operations.md: the first SIGTERM drains,
//! it goes to the host only (`KillMode=mixed`), and the time before the SIGKILL is
//! [`stop_timeout_secs`].

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The systemd unit's file name.
pub const SYSTEMD_UNIT_NAME: &str = "agentserver.service";
/// The launchd job's label (and the plist's file stem).
pub const LAUNCHD_LABEL: &str = "dev.agentserver.host";

/// Worst case of the drain apart from the poll in flight and the grace period (seconds): a
/// bridge `PUT /worker running` (150 s) and a bridge `PUT /worker idle` (150 s) that both keep
/// failing, final statuses (10 s), the tunnel close (5 s), the opencode shutdown (10 s) and the
/// exit (2 s). See docs/operations.md, "Running as a service".
pub const DRAIN_FIXED_SECS: u64 = 150 + 150 + 10 + 5 + 10 + 2;
/// Margin on top of the worst case.
pub const STOP_MARGIN_SECS: u64 = 33;

/// The default `--grace-period` of `run` (seconds).
pub const DEFAULT_GRACE_SECS: u64 = 30;
/// The default `--poll-timeout` of `run` (seconds).
pub const DEFAULT_POLL_TIMEOUT_SECS: u64 = 60;

/// Seconds the service manager waits after the SIGTERM before it sends SIGKILL: the whole
/// worst-case drain (poll in flight + grace period + [`DRAIN_FIXED_SECS`]) plus
/// [`STOP_MARGIN_SECS`]. With the defaults (30 s grace, 60 s poll timeout) this is 450.
pub fn stop_timeout_secs(grace_period: Duration, poll_timeout: Duration) -> u64 {
    let ceil = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    ceil(poll_timeout) + ceil(grace_period) + DRAIN_FIXED_SECS + STOP_MARGIN_SECS
}

/// The value `run_args` gives the option `--name` (`--name V` or `--name=V`; the last one wins).
fn option_value<'a>(run_args: &'a [String], name: &str) -> Option<&'a str> {
    let mut found = None;
    let mut args = run_args.iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == name {
            found = args.next().map(String::as_str);
        } else if let Some(value) = arg.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            found = Some(value);
        }
    }
    found
}

/// Parses seconds as `run` does (fractions allowed).
fn seconds(text: &str, option: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{option} `{text}` is not a number of seconds"))
}

/// The grace period and poll timeout that `run_args` (the arguments after `run`) ask for, with
/// `run`'s defaults for those not given.
pub fn drain_settings(run_args: &[String]) -> Result<(Duration, Duration), String> {
    let grace = match option_value(run_args, "--grace-period") {
        Some(v) => seconds(v, "--grace-period")?,
        None => Duration::from_secs(DEFAULT_GRACE_SECS),
    };
    let poll = match option_value(run_args, "--poll-timeout") {
        Some(v) => seconds(v, "--poll-timeout")?,
        None => Duration::from_secs(DEFAULT_POLL_TIMEOUT_SECS),
    };
    Ok((grace, poll))
}

/// Which manager the service is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// systemd (Linux).
    Systemd,
    /// launchd (macOS).
    Launchd,
}

impl ServiceKind {
    /// The native kind of this platform: launchd on macOS, systemd elsewhere.
    pub fn native() -> Self {
        if cfg!(target_os = "macos") {
            Self::Launchd
        } else {
            Self::Systemd
        }
    }
}

/// What a service definition says.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// The `agentserver` binary (absolute).
    pub binary: PathBuf,
    /// Directory tasks run in (absolute).
    pub work_dir: PathBuf,
    /// Arguments after `agentserver run`.
    pub run_args: Vec<String>,
    /// Seconds between the SIGTERM and the SIGKILL ([`stop_timeout_secs`]).
    pub stop_timeout_secs: u64,
    /// A system-wide service (`/etc/systemd/system`, `/Library/LaunchDaemons`) rather than the
    /// user's own.
    pub system: bool,
    /// For a system service: the user it runs as (`User=`, `UserName`).
    pub run_as: Option<String>,
    /// Environment the service gets (`PATH`, `AGENTSERVER_HOME`), in order.
    pub environment: Vec<(String, String)>,
}

impl ServiceSpec {
    /// The full command line: binary, `run`, then [`ServiceSpec::run_args`].
    pub fn program_arguments(&self) -> Vec<String> {
        let mut args = vec![self.binary.to_string_lossy().into_owned(), "run".to_owned()];
        args.extend(self.run_args.iter().cloned());
        args
    }
}

/// Where the definition lives by default: `~/.config/systemd/user/agentserver.service` or
/// `/etc/systemd/system/agentserver.service`; `~/Library/LaunchAgents/dev.agentserver.host.plist`
/// or `/Library/LaunchDaemons/dev.agentserver.host.plist`. `home` is the user's home.
pub fn default_dir(kind: ServiceKind, system: bool, home: &Path) -> PathBuf {
    match (kind, system) {
        (ServiceKind::Systemd, false) => std::env::var_os("XDG_CONFIG_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".config"))
            .join("systemd/user"),
        (ServiceKind::Systemd, true) => PathBuf::from("/etc/systemd/system"),
        (ServiceKind::Launchd, false) => home.join("Library/LaunchAgents"),
        (ServiceKind::Launchd, true) => PathBuf::from("/Library/LaunchDaemons"),
    }
}

/// The definition's file name in its directory.
pub fn file_name(kind: ServiceKind) -> String {
    match kind {
        ServiceKind::Systemd => SYSTEMD_UNIT_NAME.to_owned(),
        ServiceKind::Launchd => format!("{LAUNCHD_LABEL}.plist"),
    }
}

/// Renders the definition for `kind`.
pub fn render(kind: ServiceKind, spec: &ServiceSpec) -> String {
    match kind {
        ServiceKind::Systemd => render_systemd(spec),
        ServiceKind::Launchd => render_launchd(spec),
    }
}

/// One word of a systemd command line or assignment: specifiers (`%`) and variables (`$`)
/// escaped, quoted when it has spaces, quotes, backslashes or nothing at all.
fn systemd_word(word: &str) -> String {
    let escaped = word.replace('%', "%%").replace('$', "$$");
    let plain = !escaped.is_empty()
        && !escaped
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'));
    if plain {
        return escaped;
    }
    let mut quoted = String::with_capacity(escaped.len() + 2);
    quoted.push('"');
    for c in escaped.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The systemd unit.
pub fn render_systemd(spec: &ServiceSpec) -> String {
    let exec = spec
        .program_arguments()
        .iter()
        .map(|a| systemd_word(a))
        .collect::<Vec<_>>()
        .join(" ");
    let mut unit = String::new();
    unit.push_str(
        "# Written by `agentserver service install`; `agentserver service uninstall` removes it.\n",
    );
    unit.push_str("[Unit]\nDescription=agentserver worker\n");
    unit.push_str("Wants=network-online.target\nAfter=network-online.target\n\n[Service]\n");
    if let Some(user) = spec.run_as.as_deref().filter(|_| spec.system) {
        unit.push_str(&format!("User={}\n", systemd_word(user)));
    }
    // WorkingDirectory takes no quotes; a leading `-` would mean "optional".
    unit.push_str(&format!(
        "WorkingDirectory={}\n",
        spec.work_dir.to_string_lossy().replace('%', "%%")
    ));
    for (name, value) in &spec.environment {
        unit.push_str(&format!(
            "Environment={}\n",
            systemd_word(&format!("{name}={value}"))
        ));
    }
    unit.push_str(&format!("ExecStart={exec}\n"));
    unit.push_str(
        "# The first SIGTERM drains; `mixed` sends it to agentserver only (the default would also\n\
         # SIGTERM the backend's processes and cut running tasks short).\n\
         KillSignal=SIGTERM\nKillMode=mixed\n",
    );
    unit.push_str(&format!(
        "# Worst-case drain: --poll-timeout + --grace-period + {DRAIN_FIXED_SECS} s (bridge requests, \
         final statuses,\n# tunnel close, exit) + {STOP_MARGIN_SECS} s margin; see docs/operations.md.\n\
         TimeoutStopSec={}\n",
        spec.stop_timeout_secs
    ));
    unit.push_str("Restart=on-failure\nRestartSec=5\n\n[Install]\n");
    unit.push_str(if spec.system {
        "WantedBy=multi-user.target\n"
    } else {
        "WantedBy=default.target\n"
    });
    unit
}

/// XML text with `&`, `<`, `>` and quotes escaped.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The launchd property list. `KeepAlive.SuccessfulExit = false` restarts it after a failure
/// (as `Restart=on-failure`); `ExitTimeOut` is the time between the SIGTERM and the SIGKILL.
pub fn render_launchd(spec: &ServiceSpec) -> String {
    let mut plist = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <plist version=\"1.0\">\n<dict>\n",
    );
    let key = |plist: &mut String, k: &str| plist.push_str(&format!("  <key>{k}</key>\n"));
    let string = |plist: &mut String, indent: &str, v: &str| {
        plist.push_str(&format!("{indent}<string>{}</string>\n", xml_escape(v)))
    };
    key(&mut plist, "Label");
    string(&mut plist, "  ", LAUNCHD_LABEL);
    if let Some(user) = spec.run_as.as_deref().filter(|_| spec.system) {
        key(&mut plist, "UserName");
        string(&mut plist, "  ", user);
    }
    key(&mut plist, "ProgramArguments");
    plist.push_str("  <array>\n");
    for arg in spec.program_arguments() {
        string(&mut plist, "    ", &arg);
    }
    plist.push_str("  </array>\n");
    key(&mut plist, "WorkingDirectory");
    string(&mut plist, "  ", &spec.work_dir.to_string_lossy());
    if !spec.environment.is_empty() {
        key(&mut plist, "EnvironmentVariables");
        plist.push_str("  <dict>\n");
        for (name, value) in &spec.environment {
            plist.push_str(&format!("    <key>{}</key>\n", xml_escape(name)));
            string(&mut plist, "    ", value);
        }
        plist.push_str("  </dict>\n");
    }
    key(&mut plist, "RunAtLoad");
    plist.push_str("  <true/>\n");
    key(&mut plist, "KeepAlive");
    plist.push_str("  <dict>\n    <key>SuccessfulExit</key>\n    <false/>\n  </dict>\n");
    key(&mut plist, "ThrottleInterval");
    plist.push_str("  <integer>5</integer>\n");
    key(&mut plist, "ExitTimeOut");
    plist.push_str(&format!(
        "  <integer>{}</integer>\n",
        spec.stop_timeout_secs
    ));
    plist.push_str("</dict>\n</plist>\n");
    plist
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            binary: PathBuf::from("/opt/agent server/bin/agentserver"),
            work_dir: PathBuf::from("/home/me/work 100%"),
            run_args: vec![
                "--backend".into(),
                "claudecode".into(),
                "--name".into(),
                "my \"box\" & <co>".into(),
            ],
            stop_timeout_secs: 450,
            system: false,
            run_as: Some("me".into()),
            environment: vec![("PATH".into(), "/usr/bin:/bin".into())],
        }
    }

    #[test]
    fn stop_timeout_matches_the_operations_doc() {
        assert_eq!(
            stop_timeout_secs(Duration::from_secs(30), Duration::from_secs(60)),
            450
        );
        assert_eq!(
            stop_timeout_secs(Duration::from_secs(120), Duration::from_millis(60_500)),
            120 + 61 + DRAIN_FIXED_SECS + STOP_MARGIN_SECS
        );
        assert_eq!(DRAIN_FIXED_SECS + 60 + 30, 417);
    }

    #[test]
    fn drain_settings_come_from_the_run_arguments() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            drain_settings(&args(&["--backend", "opencode"])).unwrap(),
            (Duration::from_secs(30), Duration::from_secs(60))
        );
        assert_eq!(
            drain_settings(&args(&["--grace-period", "90", "--poll-timeout=20.5"])).unwrap(),
            (Duration::from_secs(90), Duration::from_millis(20_500))
        );
        assert!(drain_settings(&args(&["--grace-period", "soon"])).is_err());
    }

    #[test]
    fn systemd_unit_has_the_stop_settings_and_quotes_words() {
        let unit = render_systemd(&spec());
        for line in [
            "KillSignal=SIGTERM",
            "KillMode=mixed",
            "TimeoutStopSec=450",
            "Restart=on-failure",
            "WantedBy=default.target",
            "WorkingDirectory=/home/me/work 100%%",
            "Environment=PATH=/usr/bin:/bin",
            r#"ExecStart="/opt/agent server/bin/agentserver" run --backend claudecode --name "my \"box\" & <co>""#,
        ] {
            assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
        }
        assert!(!unit.contains("User="), "a user unit has no User=");
        let system = render_systemd(&ServiceSpec {
            system: true,
            ..spec()
        });
        assert!(system.contains("\nUser=me\n") && system.contains("WantedBy=multi-user.target"));
    }

    #[test]
    fn launchd_plist_escapes_xml() {
        let plist = render_launchd(&spec());
        assert!(plist.contains("<string>my &quot;box&quot; &amp; &lt;co&gt;</string>"));
        assert!(plist.contains("<key>ExitTimeOut</key>\n  <integer>450</integer>"));
        assert!(plist.contains("<string>dev.agentserver.host</string>"));
    }

    #[test]
    fn systemd_words() {
        assert_eq!(systemd_word("plain"), "plain");
        assert_eq!(systemd_word(""), "\"\"");
        assert_eq!(systemd_word("$HOME"), "$$HOME");
        assert_eq!(systemd_word("a b"), "\"a b\"");
        assert_eq!(systemd_word(r"a\b"), r#""a\\b""#);
    }
}

//! What a guest may reach over HTTP: the hosts its manifest asked for, intersected with the
//! user's grant (see `plugins::Grant`). One small type decides, for the first request and for
//! every redirect, so the two cannot disagree.

/// The outbound HTTP hosts a plugin was granted.
#[derive(Clone, Debug, Default)]
pub(super) struct HttpGrant {
    hosts: Vec<String>,
    /// What the manifest asked for, and the plugin's name: to say what is missing.
    asked: Vec<String>,
    plugin: String,
}

impl HttpGrant {
    /// A grant of exactly `hosts` (`*` stands for every host).
    #[cfg(test)]
    pub(super) fn new(hosts: Vec<String>) -> Self {
        Self {
            hosts,
            asked: Vec::new(),
            plugin: String::new(),
        }
    }

    /// A grant of `hosts` to `plugin`, whose manifest asked for `asked`: refusals say whether
    /// the manifest or the user's grant lacks the host.
    pub(super) fn for_plugin(hosts: Vec<String>, asked: Vec<String>, plugin: &str) -> Self {
        Self {
            hosts,
            asked,
            plugin: plugin.to_owned(),
        }
    }

    /// True when `host` may be reached: granted by name (case-insensitively) or by `*`.
    pub(super) fn permits_host(&self, host: &str) -> bool {
        self.hosts
            .iter()
            .any(|h| h == "*" || h.eq_ignore_ascii_case(host))
    }

    /// Checks a request URL: `http` or `https` and a granted host. The error is what the
    /// guest reads.
    pub(super) fn check(&self, url: &str) -> Result<url::Url, String> {
        let url = url::Url::parse(url).map_err(|e| format!("bad URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("unsupported URL scheme `{}`", url.scheme()));
        }
        let host = url.host_str().unwrap_or_default();
        if !self.permits_host(host) {
            let name = if self.plugin.is_empty() {
                "NAME"
            } else {
                &self.plugin
            };
            let in_manifest = self
                .asked
                .iter()
                .any(|h| h == "*" || h.eq_ignore_ascii_case(host));
            return Err(if in_manifest {
                format!(
                    "not permitted: `{host}` is not among the HTTP hosts this plugin was \
                     granted; the manifest asks for it but the user's grant lacks it: add \
                     `http = [\"{host}\"]` under [plugins.grants.{name}] in \
                     ~/.agentserver/config.toml"
                )
            } else {
                format!(
                    "not permitted: `{host}` is not among the HTTP hosts this plugin was \
                     granted; its manifest does not ask for it: add `\"{host}\"` to `http` \
                     under [permissions] in plugin.toml, then grant it under \
                     [plugins.grants.{name}] in ~/.agentserver/config.toml"
                )
            });
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_whether_the_manifest_or_the_grant_lacks_the_host() {
        let grant = HttpGrant::for_plugin(
            vec!["a.example".into()],
            vec!["a.example".into(), "b.example".into()],
            "p",
        );
        let err = grant.check("https://b.example/").unwrap_err();
        assert!(
            err.contains("the manifest asks for it but the user's grant lacks it"),
            "{err}"
        );
        assert!(err.contains("[plugins.grants.p]"), "{err}");
        let err = grant.check("https://c.example/").unwrap_err();
        assert!(err.contains("its manifest does not ask for it"), "{err}");
    }

    #[test]
    fn only_granted_hosts_pass_whatever_their_case() {
        let grant = HttpGrant::new(vec!["api.example.com".into()]);
        assert!(grant.check("https://API.Example.com/v1").is_ok());
        assert!(grant.check("http://api.example.com:8080/").is_ok());
        let err = grant.check("https://evil.example.com/").unwrap_err();
        assert!(err.contains("`evil.example.com` is not among"), "{err}");
        // A granted name inside another host's name is not that host.
        assert!(grant.check("https://api.example.com.evil.net/").is_err());
    }

    #[test]
    fn no_grant_refuses_everything_and_a_star_allows_every_host() {
        assert!(HttpGrant::default().check("https://example.com/").is_err());
        assert!(!HttpGrant::default().permits_host(""));
        let all = HttpGrant::new(vec!["*".into()]);
        assert!(all.check("https://anything.test/").is_ok());
    }

    #[test]
    fn other_schemes_and_bad_urls_are_refused_with_a_reason() {
        let all = HttpGrant::new(vec!["*".into()]);
        assert_eq!(
            all.check("file:///etc/passwd").unwrap_err(),
            "unsupported URL scheme `file`"
        );
        assert!(all.check("not a url").unwrap_err().starts_with("bad URL"));
    }
}

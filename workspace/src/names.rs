//! Turning task ids and session keys into directory names and branch names.

/// FNV-1a, 64 bits: a stable short hash that tells apart two keys that sanitize alike.
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Longest sanitized part kept before the hash suffix.
const MAX_PART: usize = 80;

/// `s` with every character outside `[A-Za-z0-9._-]` replaced by `_`, no leading dot or dash,
/// no `..`, no trailing `.lock` or `.`, at most `MAX_PART` characters; when anything had to
/// change, a hash of the original is appended so distinct inputs stay distinct.
pub(crate) fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    while out.contains("..") {
        out = out.replace("..", "_.");
    }
    let trimmed = out.trim_start_matches(['.', '-']).to_string();
    let mut out = trimmed;
    out.truncate(MAX_PART);
    while out.ends_with('.') || out.ends_with(".lock") {
        if out.ends_with('.') {
            out.pop();
        } else {
            out.truncate(out.len() - ".lock".len());
        }
    }
    if out != s || out.is_empty() {
        if !out.is_empty() {
            out.push('-');
        }
        out.push_str(&format!("{:08x}", fnv1a(s) as u32));
    }
    out
}

/// The worktree directory name of a session.
pub(crate) fn session_dir(key: &str) -> String {
    format!("s-{}", sanitize(key))
}

/// The worktree directory name of a task without a session.
pub(crate) fn task_dir(task_id: &str) -> String {
    format!("t-{}", sanitize(task_id))
}

/// A branch prefix made safe: each `/`-separated component sanitized, empty ones dropped.
pub(crate) fn prefix(p: &str) -> String {
    let parts: Vec<String> = p
        .split('/')
        .filter(|c| !c.is_empty())
        .map(sanitize)
        .collect();
    parts.join("/")
}

/// The task's branch name, `<prefix>/<task id sanitized>` (or just the task part without a prefix).
pub(crate) fn branch(prefix: &str, task_id: &str) -> String {
    let task = sanitize(task_id);
    if prefix.is_empty() {
        task
    } else {
        format!("{prefix}/{task}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_stay_as_they_are() {
        assert_eq!(sanitize("task_01HXYZ-9"), "task_01HXYZ-9");
        assert_eq!(branch("agentserver", "abc"), "agentserver/abc");
    }

    #[test]
    fn odd_ids_are_made_safe_and_stay_distinct() {
        let a = sanitize("a/b");
        let b = sanitize("a:b");
        assert!(a.starts_with("a_b-"), "{a}");
        assert_ne!(a, b);
        for s in [
            "..",
            ".lock",
            "-x",
            "x.lock",
            "a..b",
            "",
            "é",
            "x y~^:?*[\\",
        ] {
            let out = sanitize(s);
            assert!(
                !out.is_empty() && !out.starts_with('.') && !out.starts_with('-'),
                "{s:?} → {out}"
            );
            assert!(
                !out.contains("..") && !out.ends_with(".lock") && !out.ends_with('.'),
                "{s:?} → {out}"
            );
        }
    }

    #[test]
    fn long_ids_are_bounded() {
        let long = "x".repeat(500);
        assert!(sanitize(&long).len() <= MAX_PART + 9);
    }
}

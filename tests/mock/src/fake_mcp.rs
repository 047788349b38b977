//! A misbehaving stdio MCP server for the "nothing left behind" tests and the soak
//! benchmark: as it starts it daemonizes a `sleep` (double fork + `setsid`, the grandchild
//! reparented away from its parent), then answers just enough MCP (`initialize`,
//! `tools/list` with no tools) for `claude` to connect, until its stdin closes.
//!
//! Run it as `python3 <script> <dir>`: each daemon notes itself as an empty file `<dir>/<pid>`
//! (created at once, so a file is never seen half-written); [`daemon_pids`] reads them back.

use std::path::Path;

/// The server's Python source (`python3 -c` it, or write it to a file).
pub const DAEMONIZING_MCP_SERVER: &str = r#"
import json, os, sys
pids = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.close(os.open(os.path.join(pids, str(os.getpid())), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.closerange(0, 256)
        os.execvp("sleep", ["sleep", "3600"])
    os._exit(0)
os.wait()
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if "id" not in msg:
        continue
    method = msg.get("method")
    if method == "initialize":
        result = {"protocolVersion": msg["params"].get("protocolVersion", "2024-11-05"),
                  "capabilities": {"tools": {}},
                  "serverInfo": {"name": "daemonizer", "version": "0.1"}}
    elif method == "tools/list":
        result = {"tools": []}
    else:
        result = {}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\n")
    sys.stdout.flush()
"#;

/// The pids of the daemons started so far with `dir` as their argument.
pub fn daemon_pids(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

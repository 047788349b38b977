/*
 * agentserver_plugin.h: the C ABI of agentserver native backend plugins.
 *
 * A native plugin is a shared library (.so / .dylib / .dll) that exports ONE symbol,
 * `agentserver_plugin_entry`, returning a pointer to a static vtable. The host:
 *
 *   1. loads the library (and never unloads it while the host runs),
 *   2. resolves `agentserver_plugin_entry` and calls it once,
 *   3. reads `abi_version`, the vtable's FIRST field, and refuses the plugin unless it equals
 *      AGENTSERVER_PLUGIN_ABI_VERSION, before reading any other field or calling anything,
 *   4. checks `struct_size` and the semver major of `api_version`,
 *   5. calls `describe` once, then `execute` once per task (possibly from several threads at
 *      the same time: `execute` must be thread-safe).
 *
 * Data crosses the boundary as UTF-8 JSON text:
 *   - the task passed to `execute` is a JSON object (see "Task JSON" below);
 *   - each event passed to `host->emit_event` is one JSON object, forwarded byte-for-byte;
 *   - `execute` returns the outcome as a JSON object (see "Outcome JSON" below);
 *   - `describe` returns {"name": "...", "version": "...", "description": "..."}.
 *
 * Ownership: memory is freed by the side that allocated it.
 *   - Strings the host passes in (task JSON) are owned by the host and valid only for the
 *     duration of the call. Copy them if you need them later.
 *   - Strings the plugin passes to host callbacks (events, log lines) stay owned by the
 *     plugin; the host copies them before the callback returns.
 *   - Strings the plugin returns (from `describe` and `execute`) are owned by the plugin; the
 *     host hands each one back to `free_string` exactly once when it is done with it.
 *
 * Cancellation: `host->is_cancelled(host->ctx)` returns 1 once the task is cancelled (or its
 * deadline passed). Poll it in long loops and return promptly; the host waits a grace period
 * and then abandons the call (the thread keeps running, the result is ignored).
 *
 * Trust: native code runs inside the host process with the host's privileges. The host only
 * loads a native plugin the user listed in ~/.agentserver/config.toml (`[plugins]
 * allow_native = ["name"]`) or named with `--allow-native NAME`.
 *
 * Task JSON (fields may be added in minor versions; ignore unknown fields):
 *   {"task_id": "task_...", "prompt": "...", "system_context": "", "max_turns": 0,
 *    "max_budget_usd": 0.0, "session_id": "", "workdir": "/abs/path"}
 *
 * Outcome JSON:
 *   {"status": "completed" | "failed" | "cancelled",
 *    "result": "...",                       (optional)
 *    "failure_reason": "...",               (optional)
 *    "failure_kind": "user" | "system",     (optional)
 *    "num_turns": 3,                        (optional)
 *    "total_cost_usd": 0.01}                (optional)
 *
 * A NULL return from `execute`, or text that is not a valid outcome, fails the task as a
 * system failure.
 */
#ifndef AGENTSERVER_PLUGIN_H
#define AGENTSERVER_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this binary interface (the vtable layout and calling conventions). Bumped only
 * on incompatible changes; the host refuses any other value. */
#define AGENTSERVER_PLUGIN_ABI_VERSION 1u

/* The semver version of the agentserver plugin API (task/event/outcome JSON) this header
 * describes. The host accepts plugins with the same major version. */
#define AGENTSERVER_PLUGIN_API_VERSION "1.0.0"

/* Name of the one symbol a plugin exports. */
#define AGENTSERVER_PLUGIN_ENTRY_SYMBOL "agentserver_plugin_entry"

/* Return values of `AgentserverHost.emit_event`. */
#define AGENTSERVER_EMIT_OK 1
#define AGENTSERVER_EMIT_CLOSED 0
#define AGENTSERVER_EMIT_INVALID (-1)

/* Log levels for `AgentserverHost.log`. */
#define AGENTSERVER_LOG_TRACE 0
#define AGENTSERVER_LOG_DEBUG 1
#define AGENTSERVER_LOG_INFO 2
#define AGENTSERVER_LOG_WARN 3
#define AGENTSERVER_LOG_ERROR 4

/* What the host hands to `execute`: callbacks for one task. Valid only during that call. All
 * callbacks are thread-safe and may be called from any thread while `execute` runs. */
typedef struct AgentserverHost {
    /* Opaque host state: pass it back as the first argument of every callback. */
    void *ctx;
    /* Emits one event: `json` points to `len` bytes of UTF-8 JSON (not necessarily
     * NUL-terminated). Returns AGENTSERVER_EMIT_OK (1) if accepted, AGENTSERVER_EMIT_CLOSED (0)
     * once the host no longer listens (the task is over: return soon), AGENTSERVER_EMIT_INVALID
     * (-1) if the text is not UTF-8 JSON (the event is dropped; the host still listens). Test
     * for `== AGENTSERVER_EMIT_OK`, not for non-zero. */
    int32_t (*emit_event)(void *ctx, const char *json, size_t len);
    /* Writes `len` bytes of UTF-8 text to the host's log at `level` (AGENTSERVER_LOG_*). */
    void (*log)(void *ctx, int32_t level, const char *message, size_t len);
    /* Returns 1 once the task is cancelled, else 0. Cheap (one atomic load): poll it often. */
    int32_t (*is_cancelled)(void *ctx);
} AgentserverHost;

/* The plugin's vtable, returned by `agentserver_plugin_entry`. Must stay valid (static) for
 * as long as the library is loaded. */
typedef struct AgentserverPluginVTable {
    /* MUST be the first field and equal AGENTSERVER_PLUGIN_ABI_VERSION. The host reads nothing
     * else when it differs. */
    uint32_t abi_version;
    /* sizeof(AgentserverPluginVTable) as the plugin was compiled; lets later ABI revisions
     * append fields. */
    uint32_t struct_size;
    /* NUL-terminated semver of the plugin API the plugin was built against
     * (AGENTSERVER_PLUGIN_API_VERSION). Static storage. */
    const char *api_version;
    /* Returns a NUL-terminated JSON object {"name","version","description"} owned by the
     * plugin (the host frees it with `free_string`). */
    char *(*describe)(void);
    /* Runs one task to its end. `task_json` points to `task_len` bytes of UTF-8 JSON owned by
     * the host. Returns a NUL-terminated outcome JSON object owned by the plugin (the host
     * frees it with `free_string`), or NULL on an internal error. */
    char *(*execute)(const char *task_json, size_t task_len, const AgentserverHost *host);
    /* Frees a string returned by `describe` or `execute`. */
    void (*free_string)(char *s);
} AgentserverPluginVTable;

/* The entry point every plugin exports. Called once, before anything else. */
typedef const AgentserverPluginVTable *(*AgentserverPluginEntryFn)(void);

/* Declaration for plugins written in C. */
const AgentserverPluginVTable *agentserver_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* AGENTSERVER_PLUGIN_H */

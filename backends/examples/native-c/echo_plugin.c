/*
 * An example native agentserver backend plugin written in C against
 * plugin-api/include/agentserver_plugin.h. Copy it to start your own.
 *
 * Build (Linux):
 *   cc -shared -fPIC -O2 -I plugin-api/include \
 *      backends/examples/native-c/echo_plugin.c -o libecho_c.so
 *
 * What it does: emits {"type":"started"} then one {"type":"char_count","count":N} event, and
 * completes with "C saw N bytes". A prompt of "fail" returns a failed outcome; "null"
 * returns NULL (an internal error); "wait-for-cancel" polls the cancellation flag.
 *
 * For the host's fault tests the same file builds broken variants:
 *   -DEXAMPLE_ABI_VERSION=99   a vtable with the wrong ABI version
 *   -DEXAMPLE_API_VERSION='"2.0.0"'  a plugin built against another API major version
 *   -DEXAMPLE_NO_ENTRY         a library that does not export the entry symbol
 *
 * The JSON handling here is deliberately tiny (no library): it finds the "prompt" string and
 * copies it without unescaping, which is enough for an example.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agentserver_plugin.h"

#ifndef EXAMPLE_ABI_VERSION
#define EXAMPLE_ABI_VERSION AGENTSERVER_PLUGIN_ABI_VERSION
#endif
#ifndef EXAMPLE_API_VERSION
#define EXAMPLE_API_VERSION AGENTSERVER_PLUGIN_API_VERSION
#endif

/* Returns a malloc'ed NUL-terminated copy of `len` bytes. */
static char *dup_bytes(const char *s, size_t len) {
    char *out = malloc(len + 1);
    if (out == NULL) return NULL;
    memcpy(out, s, len);
    out[len] = '\0';
    return out;
}

/* Finds the raw (still escaped) text of the "prompt" string field. */
static char *find_prompt(const char *json, size_t len) {
    const char *key = "\"prompt\"";
    size_t key_len = strlen(key);
    for (size_t i = 0; i + key_len <= len; i++) {
        if (memcmp(json + i, key, key_len) != 0) continue;
        size_t j = i + key_len;
        while (j < len && (json[j] == ' ' || json[j] == ':')) j++;
        if (j >= len || json[j] != '"') return NULL;
        size_t start = ++j;
        while (j < len && json[j] != '"') {
            if (json[j] == '\\') j++; /* skip the escaped character */
            j++;
        }
        if (j > len) return NULL;
        return dup_bytes(json + start, j - start);
    }
    return NULL;
}

static char *describe(void) {
    const char *text =
        "{\"name\":\"native-c-example\",\"version\":\"0.1.0\","
        "\"description\":\"Counts the prompt's bytes (native C example)\"}";
    return dup_bytes(text, strlen(text));
}

static void emit(const AgentserverHost *host, const char *json) {
    host->emit_event(host->ctx, json, strlen(json));
}

static char *execute(const char *task_json, size_t task_len, const AgentserverHost *host) {
    char *prompt = find_prompt(task_json, task_len);
    if (prompt == NULL) {
        const char *bad = "{\"status\":\"failed\",\"failure_reason\":\"no prompt in task\","
                          "\"failure_kind\":\"system\"}";
        return dup_bytes(bad, strlen(bad));
    }
    const char *msg = "C plugin received a task";
    host->log(host->ctx, AGENTSERVER_LOG_INFO, msg, strlen(msg));

    char buf[512];
    char *out = NULL;
    if (strcmp(prompt, "null") == 0) {
        out = NULL;
    } else if (strcmp(prompt, "fail") == 0) {
        const char *failed = "{\"status\":\"failed\",\"failure_reason\":\"asked to fail\","
                             "\"failure_kind\":\"user\"}";
        out = dup_bytes(failed, strlen(failed));
    } else if (strcmp(prompt, "wait-for-cancel") == 0) {
        emit(host, "{\"type\":\"waiting\"}");
        struct timespec ms = {0, 1000000};
        int i;
        for (i = 0; i < 60000 && !host->is_cancelled(host->ctx); i++) nanosleep(&ms, NULL);
        const char *done = i < 60000
            ? "{\"status\":\"cancelled\",\"failure_reason\":\"cancelled by the host\"}"
            : "{\"status\":\"failed\",\"failure_reason\":\"never cancelled\"}";
        out = dup_bytes(done, strlen(done));
#ifdef EXAMPLE_IGNORE_CANCEL
    } else if (strcmp(prompt, "ignore-cancel") == 0) {
        /* Test build only: a misbehaving plugin that never looks at the cancel flag. */
        emit(host, "{\"type\":\"ignoring\"}");
        struct timespec s = {120, 0};
        nanosleep(&s, NULL);
        out = dup_bytes("{\"status\":\"completed\",\"result\":\"late\"}", 38);
#endif
    } else if (strcmp(prompt, "noop") == 0) {
        const char *done = "{\"status\":\"completed\",\"result\":\"\"}";
        out = dup_bytes(done, strlen(done));
    } else {
        size_t count = strlen(prompt);
        emit(host, "{\"type\":\"started\",\"language\":\"c\"}");
        snprintf(buf, sizeof buf, "{\"type\":\"char_count\",\"count\":%zu}", count);
        emit(host, buf);
        snprintf(buf, sizeof buf,
                 "{\"status\":\"completed\",\"result\":\"C saw %zu bytes\",\"num_turns\":1}",
                 count);
        out = dup_bytes(buf, strlen(buf));
    }
    free(prompt);
    return out;
}

static void free_string(char *s) { free(s); }

static const AgentserverPluginVTable VTABLE = {
    EXAMPLE_ABI_VERSION,
    sizeof(AgentserverPluginVTable),
    EXAMPLE_API_VERSION,
    describe,
    execute,
    free_string,
};

#ifndef EXAMPLE_NO_ENTRY
const AgentserverPluginVTable *agentserver_plugin_entry(void) { return &VTABLE; }
#else
/* Keeps the vtable referenced so the compiler does not warn; no entry symbol is exported. */
const void *example_not_the_entry(void) { return &VTABLE; }
#endif

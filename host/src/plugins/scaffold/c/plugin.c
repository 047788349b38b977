/*
 * {{name}}: a native agentserver backend plugin in C (written by `agentserver plugins new`).
 * It answers every prompt with one assistant event and completes; the prompt "wait" waits for
 * cancellation. Build: sh build.sh. Test: sh test.sh. Guide: docs/guides/c-native.md.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agentserver_json.h"
#include "agentserver_plugin.h"

static char *describe(void) {
    AsjBuf b;
    asj_init(&b);
    asj_object(&b);
    asj_field_str(&b, "name", "{{name}}");
    asj_field_str(&b, "version", "0.1.0");
    asj_field_str(&b, "description", "Says what it was asked");
    asj_end(&b);
    return asj_take(&b);
}

static char *outcome(const char *status, const char *result, const char *reason) {
    AsjBuf b;
    asj_init(&b);
    asj_object(&b);
    asj_field_str(&b, "status", status);
    if (result != NULL) asj_field_str(&b, "result", result);
    if (reason != NULL) asj_field_str(&b, "failure_reason", reason);
    asj_field_int(&b, "num_turns", 1);
    asj_end(&b);
    return asj_take(&b);
}

static char *execute(const char *task_json, size_t task_len, const AgentserverHost *host) {
    char *prompt = asj_get_string(task_json, task_len, "prompt");
    if (prompt == NULL) return outcome("failed", NULL, "the task has no prompt");
    if (strcmp(prompt, "wait") == 0) {
        free(prompt);
        struct timespec ms = {0, 1000000};
        while (!host->is_cancelled(host->ctx)) nanosleep(&ms, NULL);
        return outcome("cancelled", NULL, "cancelled by the host");
    }

    AsjBuf text;
    asj_init(&text);
    /* The answer as plain text: built in a buffer too, then quoted by asj_field_str. */
    const char *intro = "You said: ";
    char *answer = malloc(strlen(intro) + strlen(prompt) + 1);
    if (answer == NULL) {
        free(prompt);
        return NULL;
    }
    strcpy(answer, intro);
    strcat(answer, prompt);
    free(prompt);

    /* {"type":"assistant","message":{"content":[{"type":"text","text":"..."}]}} */
    asj_object(&text);
    asj_field_str(&text, "type", "assistant");
    asj_key(&text, "message");
    asj_object(&text);
    asj_key(&text, "content");
    asj_array(&text);
    asj_object(&text);
    asj_field_str(&text, "type", "text");
    asj_field_str(&text, "text", answer);
    asj_end(&text);
    asj_end(&text);
    asj_end(&text);
    asj_end(&text);
    int rc = asj_emit(host, &text);
    asj_free(&text);
    if (rc == AGENTSERVER_EMIT_CLOSED) {
        free(answer);
        return outcome("cancelled", NULL, "the host stopped listening");
    }
    char *done = outcome("completed", answer, NULL);
    free(answer);
    return done;
}

static void free_string(char *s) { free(s); }

static const AgentserverPluginVTable VTABLE = {
    AGENTSERVER_PLUGIN_ABI_VERSION,
    sizeof(AgentserverPluginVTable),
    AGENTSERVER_PLUGIN_API_VERSION,
    describe,
    execute,
    free_string,
};

const AgentserverPluginVTable *agentserver_plugin_entry(void) { return &VTABLE; }

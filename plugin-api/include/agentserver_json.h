/*
 * agentserver_json.h: a tiny, header-only helper for native C plugins to build the JSON the
 * host expects (events and outcomes) with every string escaped correctly, and to read string
 * and number fields out of the task JSON. No dependencies beyond the C standard library.
 *
 *   AsjBuf ev;
 *   asj_init(&ev);
 *   asj_object(&ev);                         // {
 *   asj_field_str(&ev, "type", "assistant");  //   "type":"assistant",
 *   asj_key(&ev, "message"); asj_object(&ev); //   "message":{
 *   asj_field_str(&ev, "text", user_text);    //     "text":"...escaped..."
 *   asj_end(&ev);                             //   }
 *   asj_end(&ev);                             // }
 *   int rc = asj_emit(host, &ev);             // AGENTSERVER_EMIT_OK / _CLOSED / _INVALID
 *   asj_free(&ev);
 *
 *   char *prompt = asj_get_string(task_json, task_len, "prompt");   // malloc'ed, unescaped
 *
 * An outcome is built the same way and returned with `asj_take` (free it in your
 * `free_string` with free()). A buffer whose allocation failed remembers it (`failed`) and
 * `asj_take` then returns NULL, which the host reports as a failed task.
 *
 * Limits: objects and arrays nest at most ASJ_MAX_DEPTH deep; the reader looks for the field
 * at any depth (fine for the flat task object the host sends).
 */
#ifndef AGENTSERVER_JSON_H
#define AGENTSERVER_JSON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agentserver_plugin.h"

#define ASJ_MAX_DEPTH 32

typedef struct AsjBuf {
    char *data;
    size_t len;
    size_t cap;
    int failed;
    int depth;
    /* For each open object/array: whether the next value needs a comma first. */
    unsigned char need_comma[ASJ_MAX_DEPTH + 1];
    /* The closing bracket of each open object/array. */
    char closer[ASJ_MAX_DEPTH + 1];
    /* A key was just written: the next value follows it without a comma. */
    int after_key;
} AsjBuf;

static inline void asj_init(AsjBuf *b) { memset(b, 0, sizeof *b); }

static inline void asj_free(AsjBuf *b) {
    free(b->data);
    asj_init(b);
}

static inline void asj_put(AsjBuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *data = realloc(b->data, cap);
        if (data == NULL) {
            b->failed = 1;
            return;
        }
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

/* Before any value: a comma when it is not the first in its object/array. */
static inline void asj_value_start(AsjBuf *b) {
    if (b->after_key) {
        b->after_key = 0;
        return;
    }
    if (b->need_comma[b->depth]) asj_put(b, ",", 1);
    b->need_comma[b->depth] = 1;
}

/* Appends `n` bytes of `s` as a JSON string literal, escaping quotes, backslashes and control
 * characters. The bytes must be UTF-8 (they are copied as they are). */
static inline void asj_string_n(AsjBuf *b, const char *s, size_t n) {
    asj_value_start(b);
    asj_put(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char hex[7];
        switch (c) {
            case '"': esc = "\\\""; break;
            case '\\': esc = "\\\\"; break;
            case '\n': esc = "\\n"; break;
            case '\r': esc = "\\r"; break;
            case '\t': esc = "\\t"; break;
            case '\b': esc = "\\b"; break;
            case '\f': esc = "\\f"; break;
            default:
                if (c < 0x20) {
                    snprintf(hex, sizeof hex, "\\u%04x", c);
                    esc = hex;
                }
        }
        if (esc != NULL) {
            asj_put(b, s + i - run, run);
            run = 0;
            asj_put(b, esc, strlen(esc));
        } else {
            run++;
        }
    }
    asj_put(b, s + n - run, run);
    asj_put(b, "\"", 1);
}

static inline void asj_string(AsjBuf *b, const char *s) { asj_string_n(b, s, strlen(s)); }

static inline void asj_int(AsjBuf *b, long long v) {
    char num[32];
    asj_value_start(b);
    snprintf(num, sizeof num, "%lld", v);
    asj_put(b, num, strlen(num));
}

static inline void asj_double(AsjBuf *b, double v) {
    char num[64];
    asj_value_start(b);
    snprintf(num, sizeof num, "%.17g", v);
    asj_put(b, num, strlen(num));
}

static inline void asj_bool(AsjBuf *b, int v) {
    asj_value_start(b);
    asj_put(b, v ? "true" : "false", v ? 4 : 5);
}

static inline void asj_null(AsjBuf *b) {
    asj_value_start(b);
    asj_put(b, "null", 4);
}

/* Appends JSON text you already have as a value (it is not checked). */
static inline void asj_raw(AsjBuf *b, const char *json) {
    asj_value_start(b);
    asj_put(b, json, strlen(json));
}

static inline void asj_open(AsjBuf *b, const char *bracket) {
    asj_value_start(b);
    asj_put(b, bracket, 1);
    if (b->depth < ASJ_MAX_DEPTH) {
        b->depth++;
        b->need_comma[b->depth] = 0;
        b->closer[b->depth] = bracket[0] == '{' ? '}' : ']';
    } else {
        b->failed = 1;
    }
}

/* Opens an object `{` or an array `[`; close either with asj_end. */
static inline void asj_object(AsjBuf *b) { asj_open(b, "{"); }
static inline void asj_array(AsjBuf *b) { asj_open(b, "["); }

/* Closes the innermost object or array. */
static inline void asj_end(AsjBuf *b) {
    if (b->depth == 0) {
        b->failed = 1;
        return;
    }
    asj_put(b, &b->closer[b->depth], 1);
    b->depth--;
    b->after_key = 0;
}

/* Writes `"key":`; the next value call writes the value. */
static inline void asj_key(AsjBuf *b, const char *key) {
    asj_string(b, key);
    asj_put(b, ":", 1);
    b->after_key = 1;
}

static inline void asj_field_str(AsjBuf *b, const char *key, const char *value) {
    asj_key(b, key);
    asj_string(b, value);
}

static inline void asj_field_int(AsjBuf *b, const char *key, long long value) {
    asj_key(b, key);
    asj_int(b, value);
}

static inline void asj_field_double(AsjBuf *b, const char *key, double value) {
    asj_key(b, key);
    asj_double(b, value);
}

static inline void asj_field_bool(AsjBuf *b, const char *key, int value) {
    asj_key(b, key);
    asj_bool(b, value);
}

/* The text built so far (NUL-terminated; "" when empty). */
static inline const char *asj_text(const AsjBuf *b) { return b->data ? b->data : ""; }

/* Hands the text over (malloc'ed; free() it) and resets the buffer. NULL if an allocation
 * failed or nothing was written. */
static inline char *asj_take(AsjBuf *b) {
    char *out = b->failed ? NULL : b->data;
    if (b->failed) free(b->data);
    asj_init(b);
    return out;
}

/* Emits the buffer as one event. Returns AGENTSERVER_EMIT_OK, AGENTSERVER_EMIT_CLOSED or
 * AGENTSERVER_EMIT_INVALID (also when an allocation failed). */
static inline int asj_emit(const AgentserverHost *host, const AsjBuf *b) {
    if (b->failed || b->data == NULL) return AGENTSERVER_EMIT_INVALID;
    return host->emit_event(host->ctx, b->data, b->len);
}

/* Appends the UTF-8 encoding of code point `cp` to `out` (at least 4 bytes free). */
static inline size_t asj_utf8(unsigned long cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static inline long asj_hex4(const char *s, size_t left) {
    if (left < 4) return -1;
    long v = 0;
    for (int k = 0; k < 4; k++) {
        char c = s[k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return -1;
    }
    return v;
}

/* Finds `"key":` in `json` (outside string values) and returns where its value starts, or
 * NULL. */
static inline const char *asj_find(const char *json, size_t len, const char *key) {
    size_t key_len = strlen(key);
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        char c = json[i];
        if (in_string) {
            if (c == '\\') i++;
            else if (c == '"') in_string = 0;
            continue;
        }
        if (c != '"') continue;
        if (i + key_len + 1 < len && memcmp(json + i + 1, key, key_len) == 0 &&
            json[i + key_len + 1] == '"') {
            size_t j = i + key_len + 2;
            while (j < len && (json[j] == ' ' || json[j] == '\t' || json[j] == '\n' || json[j] == '\r')) j++;
            if (j < len && json[j] == ':') {
                j++;
                while (j < len && (json[j] == ' ' || json[j] == '\t' || json[j] == '\n' || json[j] == '\r')) j++;
                return json + j;
            }
        }
        in_string = 1;
    }
    return NULL;
}

/* The unescaped value of the string field `key` (malloc'ed, NUL-terminated; free() it), or
 * NULL when there is no such string field. */
static inline char *asj_get_string(const char *json, size_t len, const char *key) {
    const char *v = asj_find(json, len, key);
    if (v == NULL || *v != '"') return NULL;
    const char *end = json + len;
    const char *p = v + 1;
    char *out = malloc((size_t)(end - p) + 1);
    if (out == NULL) return NULL;
    size_t n = 0;
    while (p < end && *p != '"') {
        if (*p != '\\') { out[n++] = *p++; continue; }
        if (++p >= end) break;
        char e = *p++;
        switch (e) {
            case 'n': out[n++] = '\n'; break;
            case 'r': out[n++] = '\r'; break;
            case 't': out[n++] = '\t'; break;
            case 'b': out[n++] = '\b'; break;
            case 'f': out[n++] = '\f'; break;
            case 'u': {
                long cp = asj_hex4(p, (size_t)(end - p));
                if (cp < 0) { free(out); return NULL; }
                p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                    long lo = asj_hex4(p + 2, (size_t)(end - p - 2));
                    if (lo >= 0xDC00 && lo <= 0xDFFF) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        p += 6;
                    }
                }
                n += asj_utf8((unsigned long)cp, out + n);
                break;
            }
            default: out[n++] = e; /* \" \\ \/ */
        }
    }
    if (p >= end) { free(out); return NULL; }
    out[n] = '\0';
    return out;
}

/* The integer value of the number field `key`, or `fallback`. */
static inline long long asj_get_int(const char *json, size_t len, const char *key, long long fallback) {
    const char *v = asj_find(json, len, key);
    if (v == NULL) return fallback;
    char *endp = NULL;
    long long value = strtoll(v, &endp, 10);
    return endp == v ? fallback : value;
}

#endif /* AGENTSERVER_JSON_H */

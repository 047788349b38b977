;; The example WASM backend plugin: a core module in WebAssembly text that follows the
;; component model's canonical ABI by hand, so it needs no wasm32 toolchain. The host turns it
;; into a component of the world `agentserver:backend/backend@1.0.0` with `wat` +
;; `wit-component` (see host/src/plugins/wasm/componentize.rs), at run time for the bundled
;; example and at test time for the tests. `cargo run -p agentserver --example
;; build_wasm_example -- DIR` writes the component and a plugin.toml into DIR.
;;
;; What it does: `describe` returns its name and version. `execute` logs a line, emits
;; {"type":"started","language":"wat"} and {"type":"echo","text":"<prompt>"}, and completes
;; with the prompt as the result and num-turns 1. A prompt of exactly "noop" completes at once
;; with an empty result and no events (the benchmark's no-op task). If the host says the task
;; is cancelled, it returns a cancelled outcome instead.
;;
;; Memory map: 0..1024 static strings, 1024 describe's return area (24 bytes), 1088
;; execute's return area (the `outcome` record, 56 bytes, 8-aligned), heap from 65536
;; (a bump allocator behind `cabi_realloc`, never freed: every task gets a fresh instance).
;;
;; Canonical ABI layout of `outcome` (offsets from 1088):
;;   +0 status (u8: 0 completed, 1 failed, 2 cancelled)
;;   +4 result option<string>:          +4 tag, +8 ptr, +12 len
;;   +16 failure-reason option<string>: +16 tag, +20 ptr, +24 len
;;   +28 failure-kind option<enum>:     +28 tag, +29 value
;;   +32 num-turns option<u32>:         +32 tag, +36 value
;;   +40 total-cost-usd option<f64>:    +40 tag, +48 value
(module
  (import "agentserver:backend/host@1.0.0" "emit-event" (func $emit (param i32 i32) (result i32)))
  (import "agentserver:backend/host@1.0.0" "log" (func $log (param i32 i32 i32)))
  (import "agentserver:backend/host@1.0.0" "cancelled" (func $cancelled (result i32)))

  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))

  (data (i32.const 16) "wasm-example")                                     ;; 12 bytes
  (data (i32.const 32) "0.1.0")                                            ;; 5
  (data (i32.const 48) "Echoes the prompt (bundled WebAssembly example)")  ;; 47
  (data (i32.const 128) "{\"type\":\"started\",\"language\":\"wat\"}")    ;; 35
  (data (i32.const 192) "{\"type\":\"echo\",\"text\":\"")                 ;; 23
  (data (i32.const 240) "\"}")                                             ;; 2
  (data (i32.const 256) "noop")                                            ;; 4
  (data (i32.const 272) "running a task")                                  ;; 14
  (data (i32.const 304) "cancelled by the host")                           ;; 21

  ;; The allocator the host uses to pass strings in (canonical ABI `cabi_realloc`).
  (func $realloc (export "cabi_realloc")
    (param $old i32) (param $old_size i32) (param $align i32) (param $new_size i32)
    (result i32)
    (local $ptr i32) (local $end i32) (local $have i32)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $ptr) (local.get $new_size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u
                  (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                  (i32.const 16)))
              (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (if (local.get $old)
      (then (memory.copy (local.get $ptr) (local.get $old) (local.get $old_size))))
    (local.get $ptr))

  ;; 1 if the two byte strings are equal.
  (func $eq (param $a i32) (param $alen i32) (param $b i32) (param $blen i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $alen) (local.get $blen)) (then (return (i32.const 0))))
    (block $differ
      (loop $next
        (if (i32.ge_u (local.get $i) (local.get $alen)) (then (return (i32.const 1))))
        (br_if $differ
          (i32.ne
            (i32.load8_u (i32.add (local.get $a) (local.get $i)))
            (i32.load8_u (i32.add (local.get $b) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  (func (export "describe") (result i32)
    (i32.store (i32.const 1024) (i32.const 16))
    (i32.store (i32.const 1028) (i32.const 12))
    (i32.store (i32.const 1032) (i32.const 32))
    (i32.store (i32.const 1036) (i32.const 5))
    (i32.store (i32.const 1040) (i32.const 48))
    (i32.store (i32.const 1044) (i32.const 47))
    (i32.const 1024))

  ;; execute(task) with the task record flattened: task-id, prompt, system-context (ptr, len
  ;; each), max-turns, max-budget-usd, session-id, workdir (ptr, len each).
  (func (export "execute")
    (param $id i32) (param $id_len i32) (param $p i32) (param $p_len i32)
    (param $sc i32) (param $sc_len i32) (param $max_turns i32) (param $budget f64)
    (param $sid i32) (param $sid_len i32) (param $wd i32) (param $wd_len i32)
    (result i32)
    (local $buf i32) (local $n i32) (local $i i32) (local $c i32)
    (memory.fill (i32.const 1088) (i32.const 0) (i32.const 56))

    ;; "noop": completed, empty result, no events.
    (if (call $eq (local.get $p) (local.get $p_len) (i32.const 256) (i32.const 4))
      (then
        (i32.store8 (i32.const 1092) (i32.const 1))
        (i32.store (i32.const 1096) (local.get $p))
        (i32.store (i32.const 1100) (i32.const 0))
        (return (i32.const 1088))))

    (call $log (i32.const 2) (i32.const 272) (i32.const 14))
    (drop (call $emit (i32.const 128) (i32.const 35)))

    ;; {"type":"echo","text":"<prompt, JSON-escaped>"}
    (local.set $buf
      (call $realloc (i32.const 0) (i32.const 0) (i32.const 1)
        (i32.add (i32.mul (local.get $p_len) (i32.const 2)) (i32.const 32))))
    (memory.copy (local.get $buf) (i32.const 192) (i32.const 23))
    (local.set $n (i32.const 23))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $p_len)))
        (local.set $c (i32.load8_u (i32.add (local.get $p) (local.get $i))))
        ;; escape " and \ ; control characters become spaces
        (if (i32.or (i32.eq (local.get $c) (i32.const 34)) (i32.eq (local.get $c) (i32.const 92)))
          (then
            (i32.store8 (i32.add (local.get $buf) (local.get $n)) (i32.const 92))
            (local.set $n (i32.add (local.get $n) (i32.const 1)))))
        (if (i32.lt_u (local.get $c) (i32.const 32)) (then (local.set $c (i32.const 32))))
        (i32.store8 (i32.add (local.get $buf) (local.get $n)) (local.get $c))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (memory.copy (i32.add (local.get $buf) (local.get $n)) (i32.const 240) (i32.const 2))
    (local.set $n (i32.add (local.get $n) (i32.const 2)))
    (drop (call $emit (local.get $buf) (local.get $n)))

    (if (call $cancelled)
      (then
        (i32.store8 (i32.const 1088) (i32.const 2))
        (i32.store8 (i32.const 1104) (i32.const 1))
        (i32.store (i32.const 1108) (i32.const 304))
        (i32.store (i32.const 1112) (i32.const 21))
        (return (i32.const 1088))))

    ;; completed: result = the prompt, num-turns = 1
    (i32.store8 (i32.const 1092) (i32.const 1))
    (i32.store (i32.const 1096) (local.get $p))
    (i32.store (i32.const 1100) (local.get $p_len))
    (i32.store8 (i32.const 1120) (i32.const 1))
    (i32.store (i32.const 1124) (i32.const 1))
    (i32.const 1088))
)

#!/usr/bin/env python3
"""A small misbehaving ACP agent for the acp backend's bad-input tests (stdlib only).

It speaks ACP v1 over stdio. What a prompt does is chosen by keywords in its text:

  PLAIN                 one text chunk "hello from fake-acp", end_turn
  UNKNOWN_NOTIFICATION  an unknown notification and an unknown request first, then as PLAIN
  MALFORMED             prints a line that is not JSON on stdout, then waits
  PERMISSION:<path>     asks session/request_permission for a tool call at <path>, then
                        reports the answer as a text chunk "permission: <outcome json>"
  READ:<path>           fs/read_text_file of <path>, reports "read: <result or error json>"
  WRITE:<path>          fs/write_text_file of <path>, reports "write: <result or error json>"
  NEVER                 never answers session/prompt, even after session/cancel
  HANG                  answers session/prompt only after session/cancel: first asks a
                        permission (which must come back "cancelled"), reports it, then
                        answers stopReason "cancelled"
  STOP:<reason>         answers with that stopReason
  EXIT                  writes "fake-acp: boom" on stderr and exits with status 3
  TERM_RUN              terminal/create (sh -c: output on stdout and stderr, exit 7),
                        wait_for_exit, output, release; reports "terminal: <json>"
  TERM_LIMIT            a command printing 5000 bytes with outputByteLimit 10
  TERM_KILL             `sleep 30`, terminal/kill, wait_for_exit; reports the exit status
  TERM_OUTSIDE          terminal/create with cwd "/"; reports the error
  TERM_LEAK             `sh -c 'echo $$; exec sleep 30'`, never released; reports "pid: N"
  TERM_DAEMON           a command that leaves a `setsid` daemon behind and exits; reports
                        the daemon's "pid: N"
  AGENT_DAEMON          the agent itself daemonizes a child (double fork + setsid); reports
                        its "pid: N"

FAKE_ACP_MODE=no_init in the environment: never answers initialize.
FAKE_ACP_SESSION_DELAY=<seconds>: session/new answers after that long.
"""

import json
import os
import re
import sys
import threading

lock = threading.Lock()
pending = {}  # id -> (event, slot)
next_id = [1000]
sessions = {}
cancelled = {}  # session id -> threading.Event


def send(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def request(method, params):
    with lock:
        next_id[0] += 1
        rid = next_id[0]
    ev = threading.Event()
    slot = {}
    pending[rid] = (ev, slot)
    send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
    ev.wait()
    return slot["msg"]


def update(sid, upd):
    send({"jsonrpc": "2.0", "method": "session/update",
          "params": {"sessionId": sid, "update": upd}})


def chunk(sid, text):
    update(sid, {"sessionUpdate": "agent_message_chunk",
                 "content": {"type": "text", "text": text}})


def answer(rid, result):
    send({"jsonrpc": "2.0", "id": rid, "result": result})


def after(keyword, text):
    m = re.search(re.escape(keyword) + r"(\S+)", text)
    return m.group(1) if m else ""


def permission(sid, path):
    msg = request("session/request_permission", {
        "sessionId": sid,
        "toolCall": {"toolCallId": "call_1", "title": "edit " + path, "kind": "edit",
                     "locations": [{"path": path}]},
        "options": [
            {"optionId": "yes", "name": "Allow", "kind": "allow_once"},
            {"optionId": "no", "name": "Reject", "kind": "reject_once"},
        ],
    })
    return msg.get("result", msg.get("error"))


def result(msg):
    return msg.get("result", msg.get("error"))


def terminal(sid, text):
    def create(command, args, **extra):
        params = {"sessionId": sid, "command": command, "args": args}
        params.update(extra)
        return request("terminal/create", params)

    def call(method, tid):
        return request(method, {"sessionId": sid, "terminalId": tid})

    if "TERM_OUTSIDE" in text:
        chunk(sid, "terminal: " + json.dumps(result(create("pwd", [], cwd="/")), sort_keys=True))
        return
    if "TERM_LEAK" in text:
        tid = result(create("sh", ["-c", "echo $$; exec sleep 30"]))["terminalId"]
        for _ in range(100):
            out = result(call("terminal/output", tid))["output"].strip()
            if out:
                break
            threading.Event().wait(0.05)
        chunk(sid, "pid: " + out)
        return
    if "TERM_DAEMON" in text:
        tid = result(create("sh", ["-c", "setsid sh -c 'echo $$; exec sleep 60' & sleep 0.3"]))["terminalId"]
        result(call("terminal/wait_for_exit", tid))
        out = result(call("terminal/output", tid))["output"].strip()
        chunk(sid, "pid: " + out)
        return
    if "TERM_RUN" in text:
        tid = result(create("sh", ["-c", "printf 'h\\303\\251llo %s\\n' \"$PWD\"; echo err >&2; exit 7"],
                            outputByteLimit=1000))["terminalId"]
    elif "TERM_LIMIT" in text:
        tid = result(create("sh", ["-c", "head -c 5000 /dev/zero | tr '\\0' x; printf END"],
                            outputByteLimit=10))["terminalId"]
    elif "TERM_KILL" in text:
        tid = result(create("sleep", ["30"]))["terminalId"]
        call("terminal/kill", tid)
    exit_status = result(call("terminal/wait_for_exit", tid))
    output = result(call("terminal/output", tid))
    release = result(call("terminal/release", tid))
    after_release = result(call("terminal/output", tid))
    chunk(sid, "terminal: " + json.dumps({"exit": exit_status, "output": output, "release": release,
                                          "after_release": after_release}, sort_keys=True))


def prompt(rid, params):
    sid = params["sessionId"]
    text = " ".join(b.get("text", "") for b in params["prompt"])
    if "EXIT" in text:
        sys.stderr.write("fake-acp: boom\n")
        sys.stderr.flush()
        os._exit(3)
    if "MALFORMED" in text:
        with lock:
            sys.stdout.write("this is not json {\n")
            sys.stdout.flush()
        return
    if "NEVER" in text:
        return
    if "HANG" in text:
        chunk(sid, "working...")
        cancelled[sid].wait()
        outcome = permission(sid, "/tmp/after-cancel")
        chunk(sid, "permission: " + json.dumps(outcome, sort_keys=True))
        answer(rid, {"stopReason": "cancelled"})
        return
    if "AGENT_DAEMON" in text:
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            pid = os.fork()
            if pid == 0:
                for fd in (0, 1, 2):
                    os.close(fd)
                threading.Event().wait(60)
                os._exit(0)
            os.write(w, str(pid).encode())
            os._exit(0)
        os.close(w)
        pid = int(os.read(r, 32))
        os.close(r)
        os.wait()
        chunk(sid, "pid: " + str(pid))
        answer(rid, {"stopReason": "end_turn"})
        return
    if "TERM_" in text:
        terminal(sid, text)
        answer(rid, {"stopReason": "end_turn"})
        return
    if "UNKNOWN_NOTIFICATION" in text:
        send({"jsonrpc": "2.0", "method": "x/unknown_notification", "params": {"a": 1}})
        unknown = request("x/unknown_request", {})
        chunk(sid, "unknown request answered: " + json.dumps(unknown.get("error", {}).get("code")))
    if "PERMISSION:" in text:
        outcome = permission(sid, after("PERMISSION:", text))
        chunk(sid, "permission: " + json.dumps(outcome, sort_keys=True))
    if "READ:" in text:
        msg = request("fs/read_text_file", {"sessionId": sid, "path": after("READ:", text)})
        chunk(sid, "read: " + json.dumps(msg.get("result", msg.get("error")), sort_keys=True))
    if "WRITE:" in text:
        msg = request("fs/write_text_file",
                      {"sessionId": sid, "path": after("WRITE:", text), "content": "written\n"})
        chunk(sid, "write: " + json.dumps(msg.get("result", msg.get("error")), sort_keys=True))
    if "STOP:" in text:
        answer(rid, {"stopReason": after("STOP:", text)})
        return
    chunk(sid, "hello from fake-acp")
    answer(rid, {"stopReason": "end_turn"})


def new_session(rid, sid):
    threading.Event().wait(float(os.environ.get("FAKE_ACP_SESSION_DELAY", "0")))
    # The answer and the first update in one write, as an agent with one event loop sends
    # them: nothing of a later prompt can come between.
    with lock:
        for msg in ({"jsonrpc": "2.0", "id": rid, "result": {"sessionId": sid}},
                    {"jsonrpc": "2.0", "method": "session/update",
                     "params": {"sessionId": sid, "update": {
                         "sessionUpdate": "available_commands_update", "availableCommands": []}}}):
            sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def main():
    no_init = os.environ.get("FAKE_ACP_MODE") == "no_init"
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        method = msg.get("method")
        if method is None:
            entry = pending.pop(msg.get("id"), None)
            if entry:
                entry[1]["msg"] = msg
                entry[0].set()
            continue
        if method == "initialize":
            if not no_init:
                answer(msg["id"], {"protocolVersion": 1, "agentCapabilities": {},
                                   "authMethods": [],
                                   "agentInfo": {"name": "fake-acp", "version": "0.0.1"}})
        elif method == "session/new":
            sid = "fake-session-%d" % (len(sessions) + 1)
            sessions[sid] = msg["params"]["cwd"]
            cancelled[sid] = threading.Event()
            threading.Thread(target=new_session, args=(msg["id"], sid), daemon=True).start()
        elif method == "session/prompt":
            threading.Thread(target=prompt, args=(msg["id"], msg["params"]), daemon=True).start()
        elif method == "session/cancel":
            cancelled[msg["params"]["sessionId"]].set()
        elif "id" in msg:
            send({"jsonrpc": "2.0", "id": msg["id"],
                  "error": {"code": -32601, "message": "method not found"}})


main()

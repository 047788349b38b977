#!/usr/bin/env python3
"""A real MCP client (the official Python `mcp` SDK) driven by host/tests/mcp_*.rs.

Usage: mcp_client.py PLAN_JSON

PLAN_JSON is an object:
  command, args, env   how to start the server (env is passed as given; the SDK adds only
                       HOME, PATH and similar defaults, so no AGENTSERVER_* leaks in)
  calls                [{"name": ..., "arguments": {...}}, ...] tool calls to make in order
  timeout              seconds for the whole session (default 20)

Prints one JSON object on stdout:
  {"protocol_version", "server_info", "capabilities", "tools": [raw tool objects],
   "results": [{"is_error": bool, "texts": [str, ...]}]}
or, when the session could not be set up, {"error": "<exception text>"} with exit code 2.
"""

import json
import sys

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def run(plan):
    params = StdioServerParameters(
        command=plan["command"], args=plan.get("args", []), env=plan.get("env") or {}
    )
    out = {}
    with anyio.fail_after(plan.get("timeout", 20)):
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                out["protocol_version"] = init.protocol_version
                out["server_info"] = init.server_info.model_dump(mode="json", exclude_none=True)
                out["capabilities"] = init.capabilities.model_dump(
                    mode="json", by_alias=True, exclude_none=True
                )
                listed = await session.list_tools()
                out["tools"] = [
                    t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in listed.tools
                ]
                results = []
                for call in plan.get("calls", []):
                    res = await session.call_tool(call["name"], call.get("arguments") or {})
                    results.append(
                        {
                            "is_error": bool(res.is_error),
                            "texts": [c.text for c in res.content if getattr(c, "type", "") == "text"],
                        }
                    )
                out["results"] = results
    return out


def main():
    plan = json.loads(sys.argv[1])
    try:
        out = anyio.run(run, plan)
    except BaseException as exc:  # noqa: BLE001 - report anything, incl. exception groups
        print(json.dumps({"error": f"{type(exc).__name__}: {exc!r}"}))
        sys.exit(2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

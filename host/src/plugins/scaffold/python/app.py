# Import every module at the top of the file: componentize-py runs this module once at build
# time and snapshots it; an import inside a function runs inside the sandbox at task time,
# where the module may not be found, and fails with a trap.
import json

import wit_world
from wit_world.imports import host
from wit_world.imports.types import Outcome, PluginInfo, Task, TaskStatus

NAME = "{{name}}"


class WitWorld(wit_world.WitWorld):
    def describe(self) -> PluginInfo:
        return PluginInfo(name=NAME, version="0.1.0", description="Says what it was asked")

    def execute(self, task: Task) -> Outcome:
        if task.prompt == "wait":
            while not host.cancelled():
                pass
            return Outcome(TaskStatus.CANCELLED, None, "cancelled by the host", None, None, None)
        if task.prompt == "crash":
            raise RuntimeError("asked to crash")
        text = "You said: " + task.prompt
        event = {"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}}
        host.emit_event(json.dumps(event, separators=(",", ":")))
        return Outcome(TaskStatus.COMPLETED, text, None, None, 1, None)

// A WASM backend plugin in JavaScript. The WIT interfaces are ES modules named after them;
// the two exports are the world's `describe` and `execute`.
import { emitEvent, cancelled } from "agentserver:backend/host@1.0.0";

export function describe() {
  return { name: "{{name}}", version: "0.1.0", description: "Says what it was asked" };
}

export function execute(task) {
  if (task.prompt === "wait") {
    while (!cancelled()) {}
    return { status: "cancelled", failureReason: "cancelled by the host" };
  }
  if (task.prompt === "crash") {
    throw new Error("asked to crash");
  }
  const text = `You said: ${task.prompt}`;
  emitEvent(JSON.stringify({ type: "assistant", message: { content: [{ type: "text", text }] } }));
  return { status: "completed", result: text, numTurns: 1 };
}

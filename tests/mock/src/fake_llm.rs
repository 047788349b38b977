//! A fake LLM server (Anthropic Messages + OpenAI chat completions, JSON and SSE) for driving the real `claude` and `opencode` CLIs offline.

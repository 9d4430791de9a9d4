"""Input/output with the outside world: chat-completions clients and the LLM judge."""

"""Input/output with the outside world: data tables read row by row (:mod:`metis.io.tables`),
HTTP retries (:mod:`metis.io.http`), the chat-completions client and the LLM judge."""

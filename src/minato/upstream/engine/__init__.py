"""The relay engine's upstream side: Ollama's answers read by httptools in an asyncio protocol, over
keep-alive connections pooled per backend (:mod:`.connections`), one exchange at a time on each
(:mod:`.exchange`), every body chunk handed on from the connection's data callback (:mod:`.protocol`)."""

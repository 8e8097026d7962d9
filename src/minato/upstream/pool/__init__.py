"""A pool of Ollama backends answering as one Ollama would, in modules along its seams.

``backend`` (one backend and its breaker), ``inventory`` (what each backend has, and probing it),
``routing`` (which backends a request may go to, best first: a pure function, and conversation
affinity around it), ``failover`` (trying them in order), ``fanout`` (the fleet operations and the
merging of several backends' answers), and ``facade`` (:class:`~minato.upstream.pool.facade.OllamaPool`,
the one object callers hold).
"""

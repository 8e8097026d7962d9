"""Everything Minato knows about talking to Ollama: the interface callers depend on, and its implementation."""

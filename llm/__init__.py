"""The generative step: the LLM client, its backends, and the guard on what it returns."""

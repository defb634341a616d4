"""`numatp serve`: an OpenAI-compatible HTTP server.

- engine.py: the scheduler, one thread that owns the model and runs every request's
  sequence in one of the model's slots (continuous batching);
- requests.py: OpenAI request bodies checked into numatp.completions.Request, and the
  OpenAI-shaped errors;
- routes.py: the Starlette application (endpoints, authentication, SSE streaming).
"""

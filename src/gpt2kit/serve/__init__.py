"""`gpt2kit serve`: an OpenAI-compatible HTTP API over the library (the optional [serve] extra).

- `protocol.py`: OpenAI's request shapes, validated into dataclasses; OpenAI's error JSON (pure Python).
- `engine.py`: the thread that owns the model: continuous batching of completions, merged embedding batches,
  bounded queues.
- `app.py`: the Starlette routes, auth and body limits, server-sent events; `run()` starts uvicorn.
- `cli.py`: the command's arguments; imports nothing heavy until it runs.

See docs/serving.md.
"""

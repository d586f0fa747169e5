"""`gpt2kit serve`: an OpenAI-compatible HTTP API over the library (the optional [serve] extra)."""

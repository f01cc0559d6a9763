"""The OpenAI-compatible server: `qwen25 serve` (server), the HTTP API (app), requests to engine work and back
(translate, protocol), JSON and tool-call constraints (constrained), and the engine's thread (runner).

Import the submodules directly; this package imports nothing itself, so the CLI stays cheap to start.
"""

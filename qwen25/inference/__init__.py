"""Running trained models: GGUF conversion both ways and the offline model cache (`hub`).

Import the submodules directly (`qwen25.inference.gguf`, `qwen25.inference.hub`); this package imports
nothing itself, so `import qwen25.inference.hub` stays cheap for the CLI.
"""

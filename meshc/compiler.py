"""The pipeline in one place: read files -> parse -> resolve -> graph checks -> Mesh.

`load(paths)` and `load_text(text)` are what the CLI, the tests and every tool use; each stage
collects all its diagnostics, and the pipeline stops only between stages (MeshcError).
"""

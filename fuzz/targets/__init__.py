"""One module per fuzz target: `run(data)`, `ALLOWED`, and the contract in the docstring."""

"""Coverage-guided fuzzing of pmemd's untrusted-input boundaries (see fuzz/README.md).

`python -m fuzz [TARGET] [SECONDS]` (what `./dev fuzz` runs) fuzzes each target with atheris;
`fuzz.contract.replay` runs one input through a target's documented-error contract.
"""

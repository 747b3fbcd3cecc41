"""The per-guest service: setup steps (the only code that sees `Guest`) and the services they wire."""

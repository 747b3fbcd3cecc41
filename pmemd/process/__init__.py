"""Process plumbing: start-up, signals and readiness, pidfile, deprivileging, logs."""

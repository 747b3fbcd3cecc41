"""_DSM dispatch and handlers: pure functions from a request to a reply."""

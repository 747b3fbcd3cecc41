"""Settings for every test: hypothesis checks properties, not speed (timings live in bench/)."""

from __future__ import annotations

from hypothesis import settings

# A loaded CI machine makes one example slow now and then; a deadline would fail the test for it.
settings.register_profile("pmemd", deadline=None)
settings.load_profile("pmemd")

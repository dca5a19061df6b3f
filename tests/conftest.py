"""Test session settings: resolved scenarios are cached in a folder of the session's own, never in the
user's ~/.cache (capsim/scenario_cache.py)."""

import os
import tempfile

os.environ["CAPSIM_CACHE_DIR"] = tempfile.mkdtemp(prefix="capsim-test-cache-")

"""Test session settings: resolved scenarios are cached in a folder of the session's own, never in the
user's ~/.cache (capsim/scenario_cache.py), and that folder (a few hundred MB of drawn routing traces over the
suite) is removed when the session ends, so repeated runs do not fill the disk."""

import atexit
import os
import shutil
import tempfile

os.environ["CAPSIM_CACHE_DIR"] = tempfile.mkdtemp(prefix="capsim-test-cache-")
atexit.register(shutil.rmtree, os.environ["CAPSIM_CACHE_DIR"], ignore_errors=True)

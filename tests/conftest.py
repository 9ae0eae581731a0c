"""Shared test setup: no model hub, ever (the bundled weights load from site-packages)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

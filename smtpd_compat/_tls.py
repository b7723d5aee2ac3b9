"""STARTTLS, implicit TLS and AUTH on the selectors loop."""

from __future__ import annotations

from typing import Any, Dict

# Keyword-only options this module adds to SMTPServer(...), with defaults.
# SMTPServer stores each as an attribute of the same name.
DEFAULTS: Dict[str, Any] = {}

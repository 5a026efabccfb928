"""An environment whose locale encoding is ASCII: LANG=C with Python's locale coercion (PEP 538) and UTF-8 mode
(PEP 540) turned off, as some containers run. Text read with the locale's encoding fails there on any non-ASCII
byte, and command-line arguments arrive with their non-ASCII bytes as surrogates (PEP 383)."""

import os

ASCII_LOCALE = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}

"""Where things are, for every test: the repository's root, whatever folder of tests/ a test lives in."""

import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent

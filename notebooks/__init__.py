"""The notebook suite, shipped inside the package as `sftlib.notebooks` (see sftlib/shipped.py)."""

"""The run and launch configs and the demo data, shipped inside the package as `sftlib.configs`
(see sftlib/shipped.py)."""

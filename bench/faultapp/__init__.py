"""A tiny Django app for the fault-injection suite (``python -m bench faults``): its process and side-effect tables."""

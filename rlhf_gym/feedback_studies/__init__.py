"""Measured studies of step 2's feedback quality, one module and ``rlhf-gym`` command each.

Each study simulates a problem of human feedback where the truth (the gold scorer) is known,
applies the package's remedy, and writes its tables and plots under one output folder.
"""

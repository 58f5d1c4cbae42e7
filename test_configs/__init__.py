"""Gin configs of run_evaluation_dopamine.py.

This file only makes test_configs a regular package, so that gin can resolve
`include 'test_configs/rainbow.gin'` through the Python path when the scripts run from
another directory (gin looks the include's folder up as a package).
"""

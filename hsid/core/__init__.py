"""The core: config, stores, queues, supervision state.

Nothing here imports from hsid outside hsid/core (tests/test_structure.py holds that line).
"""

"""The Inference Endpoints handler, `handler.py`, uploaded to the root of every published model repository.

`handler.py` must work on its own there, so it imports nothing from this repository; the training data path
imports its `to_rgb`, so that training and serving convert images one way.
"""

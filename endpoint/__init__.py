"""What runs on the Hub beside a model, importing nothing from this repository.

`handler.py`, the Inference Endpoints handler, is uploaded to the root of every published model repository; its
`load_image` is how every script decodes an image, and the training data path imports its `to_rgb`, so that
training and serving convert images one way. The demo Space carries it beside its app (`space/`).
"""

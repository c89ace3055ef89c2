"""The demo Space: a Gradio app of a VTLM model (`app.py`: the top-5 classes and what the model attended to), the
folder that publishing uploads as a Hub Space (`folder.py`: `app.py` with the endpoint's `handler.py`, which decodes
images for it, the run's examples, and the versions in `requirements.txt`), and, from this repository,
`scripts/demo.py`, which runs the app locally.
"""

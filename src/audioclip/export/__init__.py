"""The model everywhere: ONNX (``audioclip.export.onnx``) and Hugging Face Hub folders (``audioclip.export.hub``).

Submodules import their optional dependencies (the ``[onnx]`` and ``[hub]``
extras) themselves; importing this package needs neither.
"""

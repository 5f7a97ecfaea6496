"""Score networks in Flax linen (NHWC images, ``[B, D]`` vectors).

Twin: ``torch_ref/models`` (the same module and class names, NCHW). Configs are the
frozen dataclasses of ``spec.model_configs`` (re-exported by ``configs``); every model is
``Model(config)`` and is called as ``model.apply(variables, x, labels, train=False)``.
"""

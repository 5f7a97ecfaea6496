"""Score networks in PyTorch (NCHW images, ``[B, D]`` vectors).

Twin: ``jax_impl/models`` (the same module and class names, NHWC). Configs are the
frozen dataclasses of ``spec.model_configs`` (re-exported by ``configs``); every model is
``Model(config)`` and is called as ``model(x, labels)`` (``model.train()`` / ``model.eval()`` switch dropout).
"""

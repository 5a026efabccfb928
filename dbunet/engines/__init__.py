"""TensorRT engines built from the exported FP16 graphs (docs/architecture.md 4), on the target device.

    profiles.py  static shapes per component and resolution, derived from the IO specs
    cache.py     the content-addressed engine key and the engines index (engines/index.json)
    builder.py   strongly typed networks through polygraphy's loaders; plugin path per TensorRT version

TensorRT, cuda-python and polygraphy are imported lazily: this package loads without them.
"""

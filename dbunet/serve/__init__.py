"""dbunet-serve: the runtime's Pipeline behind HTTP on Ray Serve (replicas, back-pressure, autoscaling).

`api` turns a request body into an image and knows nothing of Ray, so the same pipeline could sit behind
another server; `app` is the Ray Serve application around it.
"""

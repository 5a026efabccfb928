"""Training of the demo presets on generated data (torch side only; nothing downstream imports it).

`python -m dbunet.train shapes --out DIR [--resume]`: see dbunet.train.trainer for the stages.
"""

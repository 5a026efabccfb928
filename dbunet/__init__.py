"""dbunet: compile and run the DB-UNet + DiffuseGAE text-to-image cascade.

Data flows one way: models -> export -> plugins -> engines -> runtime. The modules at
this top level (config, errors, schedulers, noise, boxes, tokenizer, atomic) are
torch-free leaves that every stage may import.
"""

__version__ = "0.1.0"

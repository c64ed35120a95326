"""Training for the SDGAN generator: data preparation (shards + manifest), augmentation (landmark warps,
identikit compositing), losses and the trainer. Imports the networks from :mod:`sdgan_stream.models`."""

"""The EvoFormer block as a tuning workload: one timed pass (`passes.block_pass`) and the block
benchmark (``python -m autotune.evoformer.bench``). The model itself is `models.evoformer`."""

"""Building xP3-style collections from raw datasets and promptsource templates (`python -m xmtf_jax.build_xp3`)."""

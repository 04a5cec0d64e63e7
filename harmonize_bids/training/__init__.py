"""Training of the harmonization model: paired-slice data, losses, the loop."""

"""Training code for the model's networks (the tiny demo preset today): a synthetic talking-figure data set
(`talking_figures`) and a trainer (`train_tiny`). It imports `echomimic2`; nothing in `echomimic2` imports it."""

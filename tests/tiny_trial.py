"""Overrides that make a trial of the built-in model take a second or two: the whole-sweep tests share them."""

TINY = [
    "data.n_train=96",
    "data.n_eval=16",
    "train.max_steps=6",
    "train.eval_every=3",
    "train.batch_size=16",
    "train.eval_generate=4",
    "train.logging_steps=3",
    "tracking.log_adapter=false",
]

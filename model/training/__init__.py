"""Training the encoder, and everything only training and evaluation need (the train extra).

config.py      the recipe: TrainConfig, whose defaults made the shipped model
trainer.py     Trainer (one network) and train() (the run, members side by side, the directory)
data.py        labelled pairs in the formats users have
groups.py      duplicate groups, leak-free splits, batches of distinct groups
network.py     the PyTorch network (Siamese LSTM; members side by side)
losses.py      the loss terms, each a pure function, and their weighted sum
teacher.py     all-MiniLM-L6-v2: token embeddings, pretraining and distillation targets
evaluation.py  PairEvaluator and the evaluation with baselines (`dupq evaluate`, `dupq sts`)
metrics.py     pair, retrieval and graded metrics; threshold and calibration fits
graded.py      STS Benchmark and SICK files
onnx_graph.py  the network as the ONNX graph serving runs
export.py      writing a model directory, reading its weights back, upgrading an older one
"""

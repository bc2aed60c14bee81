"""dupq's model, in two layers.

Serving (this package's modules; NumPy, ``tokenizers`` and ONNX Runtime, no PyTorch): the model
directory (:mod:`model.model_dir`), the tokenizer (:mod:`model.tokenizer`), the encoder at run
time (:mod:`model.encoder`), the architecture (:mod:`model.config`), the calibrated probability
(:mod:`model.calibration`) and whether a delimited file quotes its fields (:mod:`model.delimited`).

Training (:mod:`model.training`; the train extra, with PyTorch): data, duplicate groups, the
network, losses, the trainer and its recipe, evaluation, the teacher, and writing a model
directory with its ONNX graph. Training uses the serving layer, never the other way round, and
nothing in ``model`` imports the web service.
"""

import os

# ONNX Runtime's packages for Linux send telemetry (1.32 here): from the moment it is imported it
# keeps a device identifier and a queue of events about the process and its sessions under
# ~/.cache/Microsoft to upload to Microsoft. A self-hosted service does not call home, so
# every dupq process turns that off before anything imports ONNX Runtime (nothing outside this
# package does); ORT_DISABLE_TELEMETRY=0, set by the operator, leaves it on.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

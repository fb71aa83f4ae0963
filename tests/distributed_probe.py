"""Run under mlx.launch by tests/test_distributed.py: load a model split across the ranks (by tensor
parallelism, or with --pipeline by layers) and print, from rank 0, every rank's weight bytes, this
rank's decoder bytes and peak memory as JSON."""

import json
import sys

import mlx.core as mx
from mlx.utils import tree_flatten

from holo_mlx.distributed import ranks, weight_bytes, world
from holo_mlx.loading import LoadError, load_model
from holo_mlx.runtime import use_fast_blas

use_fast_blas()
group = world()
try:
    model = load_model(sys.argv[1], group, pipeline="--pipeline" in sys.argv)
except LoadError as error:
    print(json.dumps({"error": str(error)}), flush=True)
    sys.exit(3)
everyone = ranks(model, group)
decoder = weight_bytes(model.language_model.model.parameters()["layers"])
if group is None or group.rank() == 0:
    print(json.dumps({"ranks": [vars(rank) for rank in everyone], "decoder_layer_bytes": decoder,
                      "peak_memory": mx.get_peak_memory(),
                      "replicated_bytes": weight_bytes(model.parameters()) - decoder}), flush=True)

"""Figure 9's dense run: `tickets.training.train_dense` of SPEC on REPLICAS devices, in a process of
its own (the logical devices must exist before TensorFlow starts).

    python benchmarks/programs/dense_run.py SPEC CPUS REPLICAS

Prints {"epoch_seconds": [...], "replicas": n, "test_accuracy": [...] per epoch}.
"""

import json
import sys

from tickets import runtime

runtime.configure(int(sys.argv[2]), replicas=int(sys.argv[3]))

from tickets import config, data, training  # noqa: E402

spec = config.load(sys.argv[1])
trajectory = training.train_dense(spec, data.load(spec.data, spec.seed))
print(json.dumps({"epoch_seconds": [m["seconds"] for m in trajectory.metrics],
                  "replicas": trajectory.runtime["replicas"],
                  "test_accuracy": [m["test_accuracy"] for m in trajectory.metrics]}))

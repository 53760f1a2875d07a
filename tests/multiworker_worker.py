"""One worker of a two-process ``MultiWorkerMirroredStrategy`` run, CPU only.

Started twice by ``tests/test_multiworker.py``, once per task index, with the same
two loopback ports::

    python tests/multiworker_worker.py OUT_DIR TASK_INDEX PORT0 PORT1 [METHOD ...]

Each worker trains every method under the strategy on the same global batches as
``tests/distribute_worker.py`` (the dataset of global batches is sharded by data:
worker i gets the i-th half of every global batch), converts the model, and writes
``OUT_DIR/worker-TASK_INDEX.json``: per method its run as ``distribute_worker.train``
returns it (schedule calls and state, quantizer state, flatbuffer, TFLM outputs). The
single-device runs to compare with are ``distribute_worker``'s.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(out_dir: str, task: int, ports: list[int], methods: list[str]) -> None:
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{port}" for port in ports]},
        "task": {"type": "worker", "index": task},
    })
    import tensorflow as tf

    import tfqnet
    from tests.distribute_worker import GLOBAL_BATCH, SAMPLES, TEST_SAMPLES, portable, train
    from tfqnet.datasets import load_digits

    # before any other TensorFlow work: the strategy sets up the cluster's collectives
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    digits = load_digits()
    data = (digits.x_train[:SAMPLES], digits.y_train[:SAMPLES], digits.x_test[:TEST_SAMPLES])
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = (tf.data.Dataset.from_tensor_slices((data[0], data[1]))
               .batch(GLOBAL_BATCH).with_options(options))

    methods = methods or tfqnet.method_names()
    report = {method: portable(train(method, strategy, data, dataset)) for method in methods}
    Path(out_dir, f"worker-{task}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), [int(p) for p in sys.argv[3:5]], sys.argv[5:])

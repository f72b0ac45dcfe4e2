"""Example ML pipelines: train a classifier on a schedule, answer predictions at an endpoint.

Needs scikit-learn: `pip install "prefect-pipedeploy[examples]"`. Both run in seconds on 2 cores.

- `train` fits a scikit-learn model on the iris data set (it ships with scikit-learn: nothing is
  downloaded), reports its metrics as outputs and returns the fitted model as a file; its
  deployment (periodic, elastic, one at a time) stores that file in the data store under
  `models/iris/{date_time}/model.pkl`, one model per training.
- `predict` answers predictions with the latest model in the data store, loaded once per pod
  (an endpoint deployment, low latency, parallel: the executions of a pod share the model).

Deploy them with the SDK (`deploy_examples` shows how) or with `prefect deploy --all` (the
repository's prefect.yaml: the same deployments, settings as job variables).
"""

from __future__ import annotations

import io
import pickle
import threading
from typing import Any

from prefect import flow
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from prefect_pipedeploy import execution_dir
from prefect_pipedeploy.datastore import DataStore, load_data_store
from prefect_pipedeploy.spec import InputSource, OutputDestination

#: Where trainings store their models: one `<prefix><date_time>/model.pkl` per training, so the
#: latest model is the greatest key.
MODEL_PREFIX = "models/iris/"
MODEL_FILE = "model.pkl"

#: The deployments of the examples, as the SDK makes them (prefect.yaml makes the same ones).
TRAINING = "iris-training"
INFERENCE = "iris-inference"


@flow(name="iris-train", log_prints=True)
def train(test_size: float = 0.25, regularization: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Fit a scaled logistic regression on the iris data set; return its test metrics and the
    model as a file (`model`: a pathlib.Path, which the data store receives as bytes)."""
    features, labels = load_iris(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=test_size, random_state=seed, stratify=labels
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(C=regularization, max_iter=500))
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    metrics = {
        "accuracy": round(float(accuracy_score(y_test, predicted)), 4),
        "f1_macro": round(float(f1_score(y_test, predicted, average="macro")), 4),
        "train_samples": len(x_train),
        "test_samples": len(x_test),
    }
    print(f"trained on {len(x_train)} samples: {metrics}")
    path = execution_dir() / MODEL_FILE  # removed with the execution, once stored
    bundle = {"model": model, "classes": [str(name) for name in load_iris().target_names]}
    path.write_bytes(pickle.dumps(bundle))
    return {"model": path, **metrics}


_loaded: dict[str, Any] = {}  # module state: lives as long as the pod
_loading = threading.Lock()  # parallel executions of a pod run in threads


def latest_model_key(store: DataStore) -> str:
    """The key of the newest model in `store` (`{date_time}` keys sort by time)."""
    keys = [o.key for o in store.list(MODEL_PREFIX) if o.key.endswith(f"/{MODEL_FILE}")]
    if not keys:
        raise LookupError(
            f"no model in the data store under {MODEL_PREFIX!r}: run the training deployment "
            f"first (`prefect deployment run iris-train/{TRAINING}`, or wait for its schedule)"
        )
    return max(keys)


def _model() -> tuple[str, dict[str, Any]]:
    """The latest model, loaded by the first execution of this process and kept."""
    with _loading:
        if "bundle" not in _loaded:
            store = load_data_store()
            key = latest_model_key(store)
            buffer = io.BytesIO()
            store.download(key, buffer)
            _loaded.update(key=key, bundle=pickle.loads(buffer.getvalue()))
            print(f"loaded model {key}")
        return _loaded["key"], _loaded["bundle"]


@flow(name="iris-predict", log_prints=True)
def predict(samples: list[list[float]]) -> dict[str, Any]:
    """The iris species of each sample (sepal length, sepal width, petal length, petal width,
    in cm) and the key of the model that answered."""
    key, bundle = _model()
    if any(len(sample) != 4 for sample in samples):
        raise ValueError("samples: each sample has 4 numbers (sepal and petal length and width)")
    classes = bundle["classes"]
    return {
        "predictions": [classes[int(i)] for i in bundle["model"].predict(samples)],
        "model": key,
    }


#: The settings of the two deployments (prefect.yaml holds the same as job variables).
TRAINING_SETTINGS: dict[str, Any] = {
    "execution_rule": "periodic",
    "mode": "elastic",
    "schedule": "every 1 hour",
    "ram_request": "512MiB",
    "max_retries": 1,
    "inputs_mapping": [InputSource(pipeline_input_name="test_size", constant_value=0.25)],
    "outputs_mapping": [
        OutputDestination(
            pipeline_output_name="model",
            datastore_path=MODEL_PREFIX + "{date_time}/" + MODEL_FILE,
        )
    ],
}
INFERENCE_SETTINGS: dict[str, Any] = {
    "execution_rule": "endpoint",
    "mode": "low_latency",
    "enable_parallel_executions": True,
    "max_parallel_executions_per_pod": 4,
    "ram_request": "512MiB",
    "inputs_mapping": [
        InputSource(pipeline_input_name="samples", endpoint_input_name="samples", data_type="array")
    ],
}


def deploy_examples(sdk: Any) -> dict[str, dict[str, Any]]:
    """Create both deployments with `sdk` (a `PipeDeploy`); returns what it answered for each
    (the inference endpoint's token is in its `endpoint_token`)."""
    return {
        TRAINING: sdk.create_deployment(f"{__file__}:train", TRAINING, **TRAINING_SETTINGS),
        INFERENCE: sdk.create_deployment(f"{__file__}:predict", INFERENCE, **INFERENCE_SETTINGS),
    }

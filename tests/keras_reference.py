"""Keras 3 (JAX backend) reference for the conversion tests; run as a subprocess, never imported
next to MindSpore.

    python tests/keras_reference.py OUT_DIR

Reads OUT_DIR/inputs.npz (``x299``, ``x224``, ``x96``: NCHW images in [-1, 1]) and writes, for a
``keras.applications.Xception(weights=None)`` given random but realistic weights:

* official.h5 / official_notop.h5: the weights in the official files' legacy Keras-2 layout and names;
* resave.weights.h5 (Keras 3 ``save_weights``) and resave.h5 (Keras 3 full-model ``.h5``);
* ten.weights.h5: a 10-class Xception's weights;
* nested.weights.h5 / nested.h5: a no-top Xception inside a Sequential with a 3-class head;
* reference.npz: ``logits`` (top model at 299), ``features`` (no-top, pooling='avg', at 224),
  ``ten_logits`` (10-class model at 96), ``nested_logits`` (the nested model at 96).
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402


def randomize(model, x, rng, head=()):
    """Random but realistic weights: He-scaled kernels, random gamma / beta / biases, and BatchNorm
    statistics measured on the images ``x`` (so activations keep a trained network's scale), then
    jittered. A few channels of every BN get a variance below 1e-3, their gamma rescaled to keep
    their outputs at the same scale: with Keras's eps 1e-3 they are ordinary channels, with another
    eps they are ~3x off. ``head``: extra layers (outside ``model``) to randomise too."""
    layers = list(model.layers) + list(head)
    for layer in layers:
        for w in layer.weights:
            shape, name = tuple(w.shape), w.name
            if name in ("kernel", "depthwise_kernel", "pointwise_kernel"):
                fan_in = int(np.prod(shape[:2])) if name == "depthwise_kernel" else int(np.prod(shape[:-1]))
                w.assign(rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype("float32"))
            elif name == "gamma":
                w.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
            elif name in ("beta", "bias"):
                w.assign(rng.normal(0, 0.2, shape).astype("float32"))
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:  # a training pass with momentum 0 stores each BN's batch statistics
        layer.momentum = 0.0
    model(x, training=True)
    for layer in norms:
        layer.momentum = 0.99
        gamma, mean, variance = (
            np.asarray(w.numpy()).copy() for w in (layer.gamma, layer.moving_mean, layer.moving_variance)
        )
        mean += rng.normal(0, 0.1, mean.shape) * np.sqrt(variance)
        variance *= rng.uniform(0.8, 1.25, variance.shape)
        small = rng.choice(variance.shape[0], size=max(2, variance.shape[0] // 64), replace=False)
        tiny = rng.uniform(1e-5, 5e-4, small.shape)
        gamma[small] *= np.sqrt((tiny + 1e-3) / (variance[small] + 1e-3))
        variance[small] = tiny
        for w, value in ((layer.gamma, gamma), (layer.moving_mean, mean), (layer.moving_variance, variance)):
            w.assign(value.astype("float32"))


def official_names(model):
    """Keras 3 layer name -> the official file's: residual convs / BNs are conv2d_1..4 / batch_normalization_1..4."""
    names, convs, bns = {}, 0, 0
    for layer in model.layers:
        name = layer.name
        if (
            isinstance(layer, keras.layers.Conv2D)
            and not isinstance(layer, keras.layers.SeparableConv2D)
            and not name.startswith("block")
        ):
            convs += 1
            name = f"conv2d_{convs}"
        elif isinstance(layer, keras.layers.BatchNormalization) and not name.startswith("block"):
            bns += 1
            name = f"batch_normalization_{bns}"
        elif isinstance(layer, keras.layers.InputLayer):
            name = "input_1"
        names[layer.name] = name
    return names


def save_legacy(model, path):
    """The legacy Keras-2 HDF5 weight layout of the official files, written by hand."""
    names = official_names(model)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([names[layer.name].encode() for layer in model.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.0.8"
        for layer in model.layers:
            name = names[layer.name]
            group = f.create_group(name)
            weight_names = [f"{name}/{w.name}:0".encode() for w in layer.weights]
            group.attrs["weight_names"] = np.array(weight_names, dtype="S") if weight_names else np.zeros((0,), "S1")
            for weight_name, w in zip(weight_names, layer.weights):
                group.create_dataset(weight_name.decode(), data=np.asarray(w.numpy(), dtype="float32"))


def nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def main(out):
    inputs = np.load(os.path.join(out, "inputs.npz"))
    rng = np.random.default_rng(0)
    top = keras.applications.Xception(weights=None, classifier_activation=None)
    randomize(top, nhwc(inputs["x299"]), rng)
    save_legacy(top, os.path.join(out, "official.h5"))
    top.save_weights(os.path.join(out, "resave.weights.h5"))
    top.save(os.path.join(out, "resave.h5"))
    logits = np.asarray(top(nhwc(inputs["x299"]), training=False))

    notop = keras.applications.Xception(weights=None, include_top=False, pooling="avg")
    weighted = [layer for layer in top.layers if layer.weights]
    for layer, source in zip([layer for layer in notop.layers if layer.weights], weighted):
        layer.set_weights(source.get_weights())  # by order: the residual layers' auto-names differ
    save_legacy(notop, os.path.join(out, "official_notop.h5"))
    features = np.asarray(notop(nhwc(inputs["x224"]), training=False))

    ten = keras.applications.Xception(weights=None, classes=10, input_shape=(96, 96, 3), classifier_activation=None)
    randomize(ten, nhwc(inputs["x96"]), rng)
    ten.save_weights(os.path.join(out, "ten.weights.h5"))
    ten_logits = np.asarray(ten(nhwc(inputs["x96"]), training=False))

    # a user's fine-tuned model: the no-top Xception nested in a Sequential with its own head
    base = keras.applications.Xception(weights=None, include_top=False, input_shape=(96, 96, 3), pooling="avg")
    nested = keras.Sequential([keras.Input((96, 96, 3)), base, keras.layers.Dropout(0.5), keras.layers.Dense(3)])
    randomize(base, nhwc(inputs["x96"]), rng, head=[nested.layers[-1]])
    nested.save_weights(os.path.join(out, "nested.weights.h5"))
    nested.save(os.path.join(out, "nested.h5"))
    nested_logits = np.asarray(nested(nhwc(inputs["x96"]), training=False))
    np.savez(
        os.path.join(out, "reference.npz"),
        logits=logits,
        features=features,
        ten_logits=ten_logits,
        nested_logits=nested_logits,
    )


if __name__ == "__main__":
    main(sys.argv[1])

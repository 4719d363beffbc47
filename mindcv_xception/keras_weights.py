"""Read Keras Xception weight files and map them to our parameter names.

Three layouts are read:

* the legacy Keras-2 HDF5 layout of the official files (``xception_weights_tf_dim_ordering_tf_kernels.h5``
  and ``..._notop.h5``): root attribute ``layer_names``, one group per layer with a ``weight_names``
  attribute, arrays at ``<layer>/<weight name>`` (``block1_conv1/kernel:0``); names are bytes;
* a tf.keras / Keras 3 full-model ``.h5``: the same inside a ``model_weights`` group, ``str`` names,
  no ``:0``;
* a Keras 3 ``.weights.h5``: ``layers/<class name>[_n]/vars/<i>``, each layer group carrying its layer
  name as attribute ``name``; ``_n`` counts the layers of one class in the model's order.

Layers are mapped by their order in the Keras graph, one Keras layer to one of our cells, and every
layer's kind and array shapes are checked, so a file that is not an Xception, or a mis-ordered
one, is an error naming the layer rather than a silently wrong network. Official layer names
(``block5_sepconv2_bn``) are checked too when the file uses them.

Layouts: conv kernel HWIO -> OIHW, depthwise (3, 3, C, 1) -> (C, 1, 3, 3), pointwise
(1, 1, Cin, Cout) -> (Cout, Cin, 1, 1), dense (in, out) -> (out, in). These are transposes: a
reshape gives the same shapes with scrambled numbers.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from .network import XCEPTION_WIDTHS, XceptionWidths, xception_blocks

CONV, SEPCONV, BN, DENSE = "Conv2D", "SeparableConv2D", "BatchNormalization", "Dense"

# the arrays of each kind of layer, in Keras's weight order
ROLES = {
    CONV: ("kernel",),
    SEPCONV: ("depthwise_kernel", "pointwise_kernel"),
    BN: ("gamma", "beta", "moving_mean", "moving_variance"),
    DENSE: ("kernel", "bias"),
}
# Keras 3 .weights.h5 names a layer's group after its class
CLASS_GROUPS = {"conv2d": CONV, "separable_conv2d": SEPCONV, "batch_normalization": BN, "dense": DENSE}
# the names keras.applications.Xception gives its layers (the shortcut layers are auto-named)
OFFICIAL_NAME = re.compile(r"block\d+_(sepconv|conv)\d+(_bn)?")


class KerasWeightsError(ValueError):
    """A file that is not a usable Keras Xception weight file."""


class KerasLayer(NamedTuple):
    """One weighted Keras layer as stored: its name, kind and arrays by role (Keras layouts)."""

    name: str
    kind: str
    arrays: Dict[str, np.ndarray]


class Slot(NamedTuple):
    """One of our cells that takes one Keras layer."""

    prefix: str  # our parameter-name prefix, e.g. "entry_flow.0.units.1.bn"
    kind: str
    keras_name: Optional[str]  # the official Keras layer name, None for auto-named layers


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _role(weight_name: str) -> str:
    """'block1_conv1_bn/moving_mean:0' -> 'moving_mean'."""
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def _kind_from_roles(roles: List[str], arrays: Dict[str, np.ndarray], where: str) -> str:
    for kind, expected in ROLES.items():
        if sorted(roles) == sorted(expected):
            if kind == DENSE and arrays["kernel"].ndim != 2:
                break  # a conv with a bias: Xception's convs have none
            return kind
    raise KerasWeightsError(
        f"{where}: weights {roles} are not those of an Xception layer (conv, separable conv, batch norm or dense)"
    )


def _read_legacy_group(group, source: str) -> List[KerasLayer]:
    """Layers of a Keras-2 style weights group (root of the official files, or ``model_weights``).

    A nested model (an Xception inside the user's Sequential) is one group whose ``weight_names``
    span many layers ('block1_conv1/kernel', 'block1_conv1_bn/gamma', ...): they are split by
    their layer prefix, keeping their order.
    """
    layers = []
    for raw_name in group.attrs["layer_names"]:
        name = _text(raw_name)
        if name not in group:
            raise KerasWeightsError(f"{source}: layer {name} is listed but not stored (truncated file?)")
        by_layer: Dict[str, List[str]] = {}
        for weight_name in (_text(w) for w in group[name].attrs.get("weight_names", [])):
            by_layer.setdefault(weight_name.rsplit("/", 1)[0], []).append(weight_name)
        for prefix, weight_names in by_layer.items():
            arrays = {}
            for weight_name in weight_names:  # weight_names order, not h5py's alphabetical one
                if weight_name not in group[name]:
                    raise KerasWeightsError(f"{source}: array {name}/{weight_name} is missing (truncated file?)")
                arrays[_role(weight_name)] = np.asarray(group[name][weight_name], dtype=np.float32)
            layer_name = prefix.rsplit("/", 1)[-1]
            kind = _kind_from_roles([_role(w) for w in weight_names], arrays, f"{source}: layer {layer_name}")
            layers.append(KerasLayer(layer_name, kind, arrays))
    return layers


def _read_keras3_weights(group, source: str) -> Dict[str, List[KerasLayer]]:
    """Layers of a Keras 3 ``.weights.h5``, per kind, each list in the model's order.

    A nested model (a group with its own ``layers``) contributes its layers before the
    container's own ones: an Xception inside a Sequential comes before the user's head.
    """
    own: Dict[str, List[Tuple[int, KerasLayer]]] = {kind: [] for kind in ROLES}
    nested = []
    for key, layer_group in group["layers"].items():
        if "layers" in layer_group:
            nested.append(_read_keras3_weights(layer_group, source))
            continue
        variables = layer_group.get("vars")
        if variables is None or not len(variables):
            continue
        match = re.fullmatch(r"([a-z0-9_]+?)(?:_(\d+))?", key)
        kind = CLASS_GROUPS.get(match.group(1)) if match else None
        name = _text(layer_group.attrs.get("name", key))
        if kind is None:
            raise KerasWeightsError(f"{source}: layer {name} ({key}) is not a layer kind of Xception")
        values = [np.asarray(variables[i], dtype=np.float32) for i in sorted(variables, key=int)]
        roles = ROLES[kind]
        if len(values) != len(roles):
            raise KerasWeightsError(f"{source}: layer {name} has {len(values)} arrays, a {kind} has {len(roles)}")
        own[kind].append((int(match.group(2) or 0), KerasLayer(name, kind, dict(zip(roles, values)))))
    return {
        kind: [layer for sub in nested for layer in sub[kind]]
        + [layer for _, layer in sorted(own[kind], key=lambda found: found[0])]
        for kind in ROLES
    }


def xception_slot_groups(
    widths: XceptionWidths = XCEPTION_WIDTHS, middle_depth: int = 8
) -> List[Tuple[List[Slot], List[Slot]]]:
    """Our cells in the Keras graph's order, with the official Keras names, block by block.

    Each group is (the block's main path, its 1x1 shortcut conv + BN or nothing). In the Keras graph
    a block's shortcut layers follow its separable convs; ``map_layers`` also accepts them first.
    """
    groups = [
        (
            [
                Slot("stem.0.conv", CONV, "block1_conv1"),
                Slot("stem.0.bn", BN, "block1_conv1_bn"),
                Slot("stem.1.conv", CONV, "block1_conv2"),
                Slot("stem.1.bn", BN, "block1_conv2_bn"),
            ],
            [],
        )
    ]
    keras_block = 2
    for flow, specs in xception_blocks(widths, middle_depth).items():
        for i, spec in enumerate(specs):
            prefix = f"{flow}.{i}"
            units = []
            for k in range(len(spec.widths)):
                keras = f"block{keras_block}_sepconv{k + 1}"
                units += [
                    Slot(f"{prefix}.units.{k}.conv", SEPCONV, keras),
                    Slot(f"{prefix}.units.{k}.bn", BN, keras + "_bn"),
                ]
            shortcut = [Slot(f"{prefix}.shortcut.0", CONV, None), Slot(f"{prefix}.shortcut.1", BN, None)]
            groups.append((units, shortcut if spec.downsample else []))
            keras_block += 1
    tail = []
    for k in range(2):
        keras = f"block{keras_block}_sepconv{k + 1}"
        tail += [Slot(f"exit_tail.{k}.conv", SEPCONV, keras), Slot(f"exit_tail.{k}.bn", BN, keras + "_bn")]
    groups.append((tail, []))
    return groups


def _to_ours(slot: Slot, layer: KerasLayer) -> Dict[str, np.ndarray]:
    """One Keras layer's arrays under our names, in MindSpore layouts (transposes, never reshapes)."""
    a = layer.arrays
    if slot.kind == CONV:
        return {slot.prefix + ".weight": a["kernel"].transpose(3, 2, 0, 1)}  # HWIO -> OIHW
    if slot.kind == SEPCONV:
        # depthwise (3,3,C,1) -> (C,1,3,3), pointwise (1,1,I,O) -> (O,I,1,1)
        return {
            slot.prefix + ".depthwise.weight": a["depthwise_kernel"].transpose(2, 3, 0, 1),
            slot.prefix + ".pointwise.weight": a["pointwise_kernel"].transpose(3, 2, 0, 1),
        }
    if slot.kind == BN:
        return {f"{slot.prefix}.{role}": a[role] for role in ROLES[BN]}
    return {slot.prefix + ".weight": a["kernel"].T, slot.prefix + ".bias": a["bias"]}  # (in, out) -> (out, in)


def _take(
    slot: Slot, layer: KerasLayer, index: int, shapes: Dict[str, Tuple[int, ...]], source: str
) -> Dict[str, np.ndarray]:
    """Check that ``layer`` is what ``slot`` needs (kind, official name, shapes) and convert it."""
    where = f"{source}: weighted layer {index} ({layer.name})"
    if layer.kind != slot.kind:
        raise KerasWeightsError(
            f"{where} is a {layer.kind} where Xception has a {slot.kind} "
            f"({slot.keras_name or slot.prefix}); the file is not a Keras Xception"
        )
    if slot.keras_name and OFFICIAL_NAME.fullmatch(layer.name) and layer.name != slot.keras_name:
        raise KerasWeightsError(f"{where} stands where Xception has {slot.keras_name}; the layers are out of order")
    try:
        converted = _to_ours(slot, layer)
    except (ValueError, KeyError):  # an array of another rank than this kind of layer has
        got = ", ".join(f"{role} {tuple(np.shape(v))}" for role, v in layer.arrays.items())
        raise KerasWeightsError(
            f"{where} has arrays {got}, not those of a Keras {slot.kind}; the file is not a Keras Xception"
        ) from None
    for name, value in converted.items():
        if tuple(value.shape) != tuple(shapes[name]):
            raise KerasWeightsError(
                f"{where} has shape {tuple(value.shape)} for {name}, Xception needs "
                f"{tuple(shapes[name])}; the file is not a Keras Xception of these widths"
            )
    return converted


Found = Union[List[KerasLayer], Dict[str, List[KerasLayer]]]


def read_keras_layers(path: str) -> Found:
    """The weighted layers of a Keras weight file: a list in graph order (``.h5`` layouts), or
    per kind, each in the model's order (Keras 3 ``.weights.h5``, which keeps no global order)."""
    import h5py

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Keras weight file not found: {path}; check the path")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise KerasWeightsError(
            f"{path} is not a readable HDF5 file (truncated, or not a Keras weight file): {str(exc).splitlines()[0]}"
        ) from None
    try:
        with handle:
            if "layer_names" in handle.attrs:
                return _read_legacy_group(handle, path)
            if "model_weights" in handle and "layer_names" in handle["model_weights"].attrs:
                return _read_legacy_group(handle["model_weights"], path)
            if "layers" in handle:
                return _read_keras3_weights(handle, path)
    except (OSError, KeyError, RuntimeError) as exc:  # h5py reading a cut file
        reason = str(exc).splitlines()[0]
        raise KerasWeightsError(f"{path} could not be read to the end (truncated?): {reason}") from None
    raise KerasWeightsError(
        f"{path} is an HDF5 file but not a Keras weight file (no layer_names, model_weights "
        f"or layers); convert a Keras Xception .h5 or .weights.h5"
    )


def _in_graph_order(by_kind: Dict[str, List[KerasLayer]], kinds: List[str], source: str) -> List[KerasLayer]:
    """Merge per-kind lists (each in model order) into the graph order whose kinds are ``kinds``."""
    queues = {kind: list(by_kind.get(kind, [])) for kind in ROLES}
    ordered = []
    for kind in kinds:
        if not queues[kind]:
            raise KerasWeightsError(f"{source} has too few {kind} layers for a Keras Xception")
        ordered.append(queues[kind].pop(0))
    return ordered + [layer for kind in (CONV, SEPCONV, BN, DENSE) for layer in queues[kind]]


def map_layers(
    found: Found,
    shapes: Dict[str, Tuple[int, ...]],
    source: str,
    widths: XceptionWidths = XCEPTION_WIDTHS,
    middle_depth: int = 8,
) -> Dict[str, np.ndarray]:
    """Map Keras layers (from ``read_keras_layers``) to our parameter names, checking kinds and shapes.

    Args:
        found: what ``read_keras_layers`` returned.
        shapes: our parameter name -> shape for the target network; whether it has
            ``classifier.weight`` decides whether a head is expected (a no-top file is then refused).
        source: the file, for messages.
    Returns:
        our parameter name -> float32 array in MindSpore layout, with the classifier if the target has one.
    """
    groups = xception_slot_groups(widths, middle_depth)
    if isinstance(found, dict):
        layers = _in_graph_order(found, [s.kind for units, short in groups for s in units + short], source)
    else:
        layers = found
    params: Dict[str, np.ndarray] = {}
    pos = 0
    for units, shortcut in groups:
        order = units + shortcut
        if shortcut and pos < len(layers) and layers[pos].kind == CONV:
            order = shortcut + units  # the shortcut listed first: still checked layer by layer
        for slot in order:
            if pos >= len(layers):
                raise KerasWeightsError(
                    f"{source} has {len(layers)} weighted layers, fewer than a Keras "
                    f"Xception's; it is not an Xception weight file"
                )
            params.update(_take(slot, layers[pos], pos, shapes, source))
            pos += 1
    extra = layers[pos:]
    if len(extra) > 1 or (extra and extra[0].kind != DENSE):
        names = ", ".join(layer.name for layer in extra[:4])
        raise KerasWeightsError(
            f"{source} has weighted layers after Xception's last one ({names}); only a single "
            f"Dense head can be converted: save the Xception part alone (include_top=False)"
        )
    if "classifier.weight" in shapes:
        if not extra:
            raise KerasWeightsError(
                f"{source} is a no-top file (no classifier) but the model has a "
                f"{shapes['classifier.weight'][0]}-class head; convert it with --num_classes 0 "
                f"(features) or use the file with the top"
            )
        params.update(_take(Slot("classifier", DENSE, None), extra[0], pos, shapes, source))
    return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in params.items()}


def keras_num_classes(found: Found) -> int:
    """The class count of the file's Dense head, 0 for a no-top file."""
    layers = found.get(DENSE, []) if isinstance(found, dict) else [layer for layer in found if layer.kind == DENSE]
    return int(layers[-1].arrays["bias"].shape[0]) if layers else 0

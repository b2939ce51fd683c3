"""The model graph as TensorBoard's ``GraphDef``, from one trace that builds no ScriptModule.

Why this exists: ``torch.jit.trace`` (what ``SummaryWriter.add_graph`` runs)
records the operations and then builds a ``ScriptModule`` for every
submodule, and ``add_graph`` then parses that module's graph in Python.  On
the tutorial's small CNN that is about 21 ms on the training thread, of
which recording the operations is about 3 ms: the rest is building and
reading back modules that are thrown away.  The graph plugin only needs the
operations and, for each, the module that ran it.

How: ``torch.jit._get_trace_graph`` (the tracer under ``torch.jit.trace``,
used by torch's legacy ONNX exporter) records the same operations in a flat
graph whose inputs are the arguments followed by the model's parameters and
buffers.  While ``torch.jit._trace._trace_module_map`` maps modules to names,
``nn.Module.__call__`` pushes each module's name as a scope, so every
operation carries the path of modules it ran in (``torch.jit.trace`` sets the
same map for the same reason).  The names pushed here are the labels
TensorBoard shows for ``add_graph``: ``Net`` for the model,
``Conv2d[conv1]`` for its submodule ``conv1``; parameters and buffers become
nodes inside their module's scope (``Net/Conv2d[conv1]/weight``), inputs are
``input/<name>`` and outputs ``output/output.<i>``.

Both are private torch names: :func:`trace_graph` returns ``None`` when either
is missing, and the plugin then traces with ``torch.jit.trace`` as
``add_graph`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tbhooks._records import field_bytes, varint

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

# GraphDef producer version as torch.utils.tensorboard writes it (TensorBoard reads either way).
_PRODUCER = 22


def scope_names(root: nn.Module) -> dict[nn.Module, str]:
    """Each module under ``root`` (``root`` included) and the scope label TensorBoard shows for it.

    ``root`` is its class name; a submodule is ``<Class>[<attribute>]`` (a
    module reachable by two paths keeps the first, as ``named_modules`` does).
    """
    names: dict[nn.Module, str] = {}
    for path, module in root.named_modules():
        names[module] = f"{type(module).__name__}[{path.rsplit('.', 1)[-1]}]" if path else type(root).__name__
    return names


def scope_paths(root: nn.Module) -> dict[nn.Module, str]:
    """Each module under ``root`` and its scope path: the labels from ``root`` down, joined by ``/``
    (``Net/Sequential[features]/Conv2d[0]``), as a traced operation's ``scopeName()`` reads."""
    labels = scope_names(root)
    by_path: dict[str, nn.Module] = {}
    paths: dict[nn.Module, str] = {}
    for path, module in root.named_modules():  # parents before children
        if path and module not in paths:
            paths[module] = f"{paths[by_path[path.rpartition('.')[0]]]}/{labels[module]}"
        elif not path:
            paths[module] = labels[module]
        by_path[path] = module
    return paths


def trace_graph(traced: nn.Module, root: nn.Module, args: tuple[torch.Tensor, ...]) -> Any:
    """Trace ``traced(*args)`` with module scopes for ``root`` and its submodules; ``None`` when this
    torch lacks the private tracer API.  Errors of the model under tracing propagate."""
    tracer = getattr(torch.jit, "_get_trace_graph", None)
    trace_module = getattr(torch.jit, "_trace", None)
    if tracer is None or trace_module is None or not hasattr(trace_module, "_trace_module_map"):
        return None
    previous = trace_module._trace_module_map
    trace_module._trace_module_map = scope_names(root)
    try:
        graph, _ = tracer(traced, args)
    finally:
        trace_module._trace_module_map = previous
    return graph


Shape = tuple[int, ...]
"""A traced tensor's static sizes."""


def _shape(value: Any) -> Shape | None:
    """The static sizes of a traced tensor value, or ``None`` when it is not a tensor of known sizes."""
    kind = value.type()
    if not isinstance(kind, torch._C.TensorType):
        return None
    sizes = kind.sizes()
    return None if sizes is None else tuple(sizes)


def _shape_bytes(shape: Shape) -> bytes:
    """A serialized ``TensorShapeProto``: a ``dim`` (field 2) per size, each ``Dim`` its ``size`` (field 1;
    proto3 leaves a size of 0 out)."""
    return b"".join([field_bytes(2, b"\x08" + varint(size)) if size else b"\x12\x00" for size in shape])


_SHAPES_KEY = field_bytes(1, b"_output_shapes")
_TEXT_KEY = field_bytes(1, b"attr")


def node_bytes(name: str, op: str, inputs: Sequence[str], text: str | None, shapes: Sequence[Shape]) -> bytes:
    """A serialized ``NodeDef``: ``name`` (1), ``op`` (2), ``input`` (3) and the ``attr`` map (5), whose
    entries are ``_output_shapes`` (a list of ``shapes``, when there are any) and ``attr`` (``text``,
    when given), in that order (the keys sorted, as deterministic serialization orders them)."""
    parts = [field_bytes(1, name.encode()), field_bytes(2, op.encode())]
    parts += [field_bytes(3, source.encode()) for source in inputs]
    if shapes:
        listed = b"".join([field_bytes(7, _shape_bytes(shape)) for shape in shapes])  # ListValue.shape
        parts.append(field_bytes(5, _SHAPES_KEY + field_bytes(2, field_bytes(1, listed))))  # AttrValue.list
    if text is not None:
        parts.append(field_bytes(5, _TEXT_KEY + field_bytes(2, field_bytes(2, text.encode()))))  # AttrValue.s
    return b"".join(parts)


def graph_bytes(nodes: Sequence[bytes], producer: int = _PRODUCER) -> bytes:
    """A serialized ``GraphDef`` of serialized ``nodes`` (field 1) and ``versions`` (4) with ``producer``."""
    versions = b"\x08" + varint(producer) if producer else b""
    return b"".join(field_bytes(1, node) for node in nodes) + field_bytes(4, versions)


def _describe(value: Any) -> str:
    """A node attribute as text: tensors by dtype and shape (a constant tensor can be large)."""
    if isinstance(value, torch.Tensor):
        return f"tensor({str(value.dtype).removeprefix('torch.')}, {list(value.shape)})"
    return str(value)


def _attributes(node: Any) -> str:
    """A node's attributes as ``{ name : value, ... }`` (the text TensorBoard shows under ``attr``)."""
    parts = []
    for name in node.attributeNames():
        try:
            parts.append(f"{name} : {_describe(node[name])}")
        except Exception:  # an attribute kind the Python binding cannot read: name it only
            parts.append(f"{name} : <{node.kindOf(name)}>")
    return "{" + ", ".join(parts) + "}"


def graph_def_bytes(graph: Any, traced: nn.Module, root: nn.Module, arguments: list[str]) -> bytes:
    """``graph`` (from :func:`trace_graph`) as a serialized ``GraphDef`` TensorBoard draws.

    ``traced`` is the module that was traced (its parameters and buffers
    follow the arguments among the graph's inputs), ``root`` the module whose
    name is the top scope, ``arguments`` a name for each argument: its node is
    ``input/<name>``.  Inputs that nothing uses are left
    out, as ``add_graph`` leaves them out.  Built as bytes (:func:`node_bytes`),
    not as protobuf messages: it runs on the training thread, where building
    the messages took about half of this function's time.
    """
    n_args = len(arguments)
    state = list(torch.jit._unique_state_dict(traced, keep_vars=True).items())  # the tracer's own order
    inputs = list(graph.inputs())
    if len(inputs) != n_args + len(state):
        raise ValueError(f"the trace has {len(inputs)} inputs, expected {n_args} arguments + {len(state)} tensors")
    owners = {id(tensor): name for name, tensor in state}
    paths = scope_paths(root)
    top = paths[root]
    where: dict[str, str] = {}  # parameter or buffer name in ``traced`` -> its module's scope path
    for module, path in paths.items():
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            key = owners.get(id(tensor))
            if key is not None:
                where.setdefault(key, path)

    nodes: list[bytes] = []
    taken: set[str] = set()
    names: dict[str, str] = {}  # a traced value's debug name (unique in a graph) -> "node" or "node:index"

    def unique(name: str) -> str:
        candidate, suffix = name, 1
        while candidate in taken:
            candidate, suffix = f"{name}_{suffix}", suffix + 1
        taken.add(candidate)
        return candidate

    for index, value in enumerate(inputs):
        if not value.uses():
            continue
        shape = _shape(value)
        if index < n_args:
            name, op = unique(f"input/{arguments[index]}"), "IO Node"
        else:
            key, tensor = state[index - n_args]
            scope = where.get(key, top)
            name = unique(f"{scope}/{key.rsplit('.', 1)[-1]}")
            op = "Parameter" if isinstance(tensor, torch.nn.Parameter) else "Buffer"
        names[value.debugName()] = name
        nodes.append(node_bytes(name, op, (), None, [shape] if shape is not None else []))

    # node.inputsAt(i)/outputsAt(i), not node.inputs()/outputs(): the iterators cost some 20 us
    # a node, which is most of this function's time on the training thread.
    for node in graph.nodes():
        outputs = [node.outputsAt(i) for i in range(node.outputsSize())]
        scope = node.scopeName() or top
        first = outputs[0].debugName() if outputs else node.kind().replace("::", "_")
        name = unique(f"{scope}/{first}")
        for position, value in enumerate(outputs):
            names[value.debugName()] = name if position == 0 else f"{name}:{position}"
        shapes = [shape for shape in map(_shape, outputs) if shape is not None]
        sources = [names[node.inputsAt(i).debugName()] for i in range(node.inputsSize())]
        nodes.append(node_bytes(name, node.kind(), sources, _attributes(node), shapes))

    for position, value in enumerate(graph.outputs(), start=1):
        shape = _shape(value)
        name = unique(f"output/output.{position}")
        shapes = [shape] if shape is not None else []
        nodes.append(node_bytes(name, "IO Node", [names[value.debugName()]], None, shapes))
    return graph_bytes(nodes)
